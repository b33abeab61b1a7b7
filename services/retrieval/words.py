"""Words of a text (memories, knowledge chunks, queries): the terms of a lexical query (stop words
dropped) and the "details" that keep two near-identical texts apart (numbers, dates, weekdays, names,
negations).

Both are plain, language-specific (English) rules, not tuned to any data set: the stop words are NLTK's
English list, and the detail rules are listed in :func:`details`."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+", re.UNICODE)
#: Words with letters and an apostrophe kept together ("don't"), for the detail check.
_WORD = re.compile("\\w+(?:['\u2019]\\w+)*", re.UNICODE)


def _set(words: str) -> frozenset[str]:
    """A word list written as one string (a readable table of words)."""
    return frozenset(words.split())


#: NLTK's English stop-word list. In a lexical query these words match nearly every memory ("what",
#: "my", "is"), so bm25 ranks noise: measured on bench/memory_quality.py, dropping them raised hybrid
#: recall@5 and cut FTS5's time at 100k memories from 18.5 to 0.8 ms (docs/MEMORY.md).
STOP_WORDS = _set(
    "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself "
    "yourselves he him his himself she she's her hers herself it it's its itself they them their "
    "theirs themselves what which who whom this that that'll these those am is are was were be been "
    "being have has had having do does did doing a an the and but if or because as until while of at "
    "by for with about against between into through during before after above below to from up down "
    "in out on off over under again further then once here there when where why how all any both each "
    "few more most other some such no nor not only own same so than too very s t can will just don "
    "don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn "
    "doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn "
    "needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't"
)


def lexical_terms(query: str, limit: int = 32, keep_stop_words: bool = False) -> list[str]:
    """The query's words for a full-text query: lower-cased, deduplicated, stop words dropped (unless
    ``keep_stop_words``), at most ``limit``. Plain tokens only, so no operator of either FTS dialect
    survives. A query of stop words only has no terms: search then ranks by meaning alone."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(query.lower()):
        if (len(token) > 1 or token.isdigit()) and (keep_stop_words or token not in STOP_WORDS):
            seen.setdefault(token, None)
    return list(seen)[:limit]


def fts5_match(query: str, keep_stop_words: bool = False) -> str:
    """The SQLite FTS5 MATCH expression of ``query``'s :func:`lexical_terms`: each term quoted (no
    operator survives), any of them (OR: bm25 ranks the documents holding more and rarer terms
    first, as BM25 does, instead of requiring all). "" when the query has no terms."""
    return " OR ".join(f'"{term}"' for term in lexical_terms(query, keep_stop_words=keep_stop_words))


WEEKDAYS = _set(
    "monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun"
    " weekday weekdays weekend weekends"
)
MONTHS = _set(
    "january february march april may june july august september october november december"
    " jan feb mar apr jun jul aug sep sept oct nov dec"
)
#: Words that place something in time or say "how many": two texts differing in one of them say
#: different things ("Tuesday at 3 pm" / "Friday at 10 am", "tomorrow" / "today").
TIME_AND_NUMBER_WORDS = _set(
    "today tomorrow yesterday tonight morning afternoon evening night noon midnight am pm a.m p.m"
    " week weeks month months year years day days hour hours minute minutes daily weekly monthly"
    " yearly annually last next ago early late before after"
    " zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    " sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety"
    " hundred thousand million billion half quarter dozen once twice"
    " first second third fourth fifth sixth seventh eighth ninth tenth last"
)
#: Words that flip a statement ("I like olives" / "I don't like olives" are close in embedding space).
NEGATIONS = _set(
    "no not never none nothing nobody neither nor without cannot can't don't doesn't didn't isn't"
    " aren't wasn't weren't won't wouldn't shouldn't couldn't haven't hasn't hadn't anymore"
    " dont doesnt didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt"
)


def _words(text: str) -> list[str]:
    return [w.replace("\u2019", "'") for w in _WORD.findall(text)]


def details(text: str) -> set[str]:
    """The words of ``text`` that carry a detail, case-folded: anything with a digit ("3", "4417",
    "3pm", "2026-05-01"), weekdays and months, time and number words ("tomorrow", "three", "first"),
    negations, and capitalised words that are not sentence-initial stop words (names: "Omar",
    "Lisbon", "IKEA"; a capitalised first word counts too unless it is a stop word like "My")."""
    found: set[str] = set()
    sentence_start = True
    for word in _words(text):
        lower = word.casefold()
        if (
            any(c.isdigit() for c in word)
            or lower in WEEKDAYS
            or lower in MONTHS
            or lower in TIME_AND_NUMBER_WORDS
            or lower in NEGATIONS
            or (word[:1].isupper() and not (sentence_start and lower in STOP_WORDS) and word != "I")
        ):
            found.add(lower)
        sentence_start = False
    # A sentence boundary inside the text makes its next word sentence-initial: handled approximately
    # by the stop-word rule above (a stop word never counts as a name), which is what matters here.
    return found


def details_differ(a: str, b: str) -> bool:
    """Whether the two texts differ in a detail (see :func:`details`): then they are two facts, not two
    wordings of one ("My dentist appointment is on Tuesday at 3 pm." / "... on Friday at 10 am."),
    and merging one into the other would lose what the newer one says."""
    return details(a) != details(b)
