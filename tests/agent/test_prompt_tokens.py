"""The prompt's token counts of recent texts are remembered (a turn counts its history window again):
the same count as counting afresh, and the memory of them stays bounded."""

from __future__ import annotations

from sessionkit_server.agent import prompt
from sessionkit_server.retrieval.tokens import count_tokens


def test_remembered_counts_equal_fresh_ones_and_stay_bounded() -> None:
    short = "Can you remind me what we decided about the refund policy?"
    long = "word " * (prompt.COUNTED_CHARS // 4)
    for text in (short, short, long, long, ""):
        assert prompt.tokens(text) == int(count_tokens(text) * prompt.TOKEN_MARGIN) + prompt.PER_MESSAGE
    assert long not in prompt._counted  # longer texts are counted each time, never kept
    for n in range(prompt.COUNTED_TEXTS + 50):
        prompt.tokens(f"message number {n}")
    assert len(prompt._counted) == prompt.COUNTED_TEXTS
    assert "message number 0" not in prompt._counted  # the oldest went first
