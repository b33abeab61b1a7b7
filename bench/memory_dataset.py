"""A deterministic, synthetic data set of long multi-session conversations for the memory benchmarks.

How it is made (``generate(users=20, sessions=10, turns=30, seed=7)``): every synthetic user gets a
persona (names of a partner, a sister, a son, a friend) and 14 facts drawn from 24 kinds (home city,
job, employer, dog, allergy, diet, coffee order, seat preference, meeting hours, a trip, a locker code,
a renovation budget, a birthday, an instrument, a language, a car, a football club, a dentist
appointment, a book, an anniversary, a favourite dish, a race, a partner's job, a sister's city). Each
fact is stated once, by the user, in one of sessions 1-6; up to 5 of them change in a later session
(the user says so: "we moved to ...", "the dentist moved my appointment to ..."), and some of those
updates are phrased almost like the original statement ("We raised the kitchen renovation budget to
..."), as people do. The other turns are

- near-misses: the same kind of fact about someone else ("My colleague Omar is allergic to
  shellfish", "My neighbour's dog is called Biscuit"), 0-2 per fact, in any session, and remarks
  that share a fact's words without stating it ("The weather in Porto was awful today");
- chit-chat and task requests of an assistant user ("What's a good recipe for lasagna?", "How do I
  reverse a list in Python?", "thanks!"), filling each session to ``turns`` turns (exact repeats
  included, as in real chats).

Every turn is one memory (the user's own words, stored as they are). After the last session each
user asks one question per fact of their own, a paraphrase drawn from templates (stored "I'm allergic
to shellfish, so keep that in mind for recipes", asked "Is there anything that makes me react
badly?"), whose answer is the one memory that states the fact's latest value; and one question per
near-miss that names somebody else ("What is Omar allergic to?" -> "My colleague Omar is allergic to
shellfish": each other person is named in one such turn only), the kind of question about people
in the user's life that long-conversation benchmarks ask; and up to 3 "lookup" questions that quote
a fact's value and ask what it is about ("What does the number 4417 open?", "Who is Biscuit?"; only
when no other turn of the user contains the value). A question is tagged "keyword" when it
shares a content word (not a stop word, compared by a crude 5-letter prefix) with its answer, else
"paraphrase".

Limits: synthetic and template-based (24 fact kinds, a few hundred templates and value lists of tens
of entries), English only, short turns, the user's side of the conversation only, one answer memory
per question (no multi-hop, temporal-arithmetic or abstention questions), and all memories are
stored within minutes, so recency cannot favour a later update as it would over real weeks. It
measures the retrieval step only: given a question, is the memory that answers it in the top 5.

:func:`scale_texts` yields distinct memory texts from the same generator (for latency at 1k-100k
memories) and :func:`scale_queries` questions for them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from memory_facts import CHITCHAT, KINDS, content_words
from memory_pools import (
    ADJECTIVES,
    ANIMALS,
    CITIES,
    DILEMMAS,
    DISHES,
    FILLERS,
    FIRST_NAMES,
    LANGUAGES,
    MONTHS,
    PAIRS,
    PY_TASKS,
    THINGS,
    TOPICS,
    WEATHER,
    WEEKDAYS,
    _pick,
)

SEED = 7


# -- the data set ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    session: int
    index: int
    text: str
    #: The fact this turn states (kind key), or "" for distractors and chit-chat.
    fact: str = ""
    value: str = ""


@dataclass(frozen=True)
class Question:
    user: str
    text: str
    fact: str
    #: The value stated by the answer memory.
    answer: str
    #: (session, index) of the turn whose memory answers the question: the fact's latest statement.
    gold: tuple[int, int]
    #: The fact changed in a later session (the earlier statement is a stale near-match).
    updated: bool
    #: "keyword" (shares a content word with the answer) or "paraphrase".
    style: str
    #: "self" (the user's own fact), "other" (a fact the user mentioned about somebody else) or
    #: "lookup" (a question quoting a fact's value: "What does the number 4417 open?").
    about: str = "self"


@dataclass
class Conversation:
    user: str
    persona: dict[str, str]
    sessions: list[list[Turn]] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)

    def turns(self) -> Iterator[Turn]:
        for session in self.sessions:
            yield from session


def _fill(template: str, rng: random.Random, slots: dict[str, str]) -> str:
    extra = {
        "who": rng.choice(FIRST_NAMES),
        "topic": rng.choice(TOPICS),
        "dish": rng.choice(DISHES),
        "thing": rng.choice(THINGS),
        "task": rng.choice(PY_TASKS),
        "adj": rng.choice(ADJECTIVES),
        "city": rng.choice(CITIES),
        "city2": rng.choice(CITIES),
        "weather": rng.choice(WEATHER),
        "dilemma": rng.choice(DILEMMAS),
        "animal": rng.choice(ANIMALS),
        "weekday": rng.choice(WEEKDAYS),
        "language": rng.choice(LANGUAGES),
    }
    a, b = rng.choice(PAIRS)
    extra.update(a=a, b=b)
    text = template.format(**{**extra, **slots})
    text = re.sub(r"\ban ([^aeiouAEIOU\d])", r"a \1", text)  # "an {v}" with a consonant value
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)  # "a {v}" with a vowel
    return text[0].upper() + text[1:]


def _persona(rng: random.Random) -> dict[str, str]:
    names = rng.sample(FIRST_NAMES, 4)
    return {
        "partner": names[0],
        "sister": names[1],
        "son": names[2],
        "friend": names[3],
        "month": rng.choice(MONTHS),
    }


def conversation(
    user: str, rng: random.Random, sessions: int = 10, turns: int = 30, facts: int = 14, updates: int = 5
) -> Conversation:
    persona = _persona(rng)
    conv = Conversation(user, persona)
    kinds = rng.sample(KINDS, facts)
    updatable = [k for k in kinds if k.updates]
    updated = set(k.key for k in rng.sample(updatable, min(updates, len(updatable))))
    planned: dict[int, list[Turn]] = {s: [] for s in range(sessions)}
    latest: dict[str, tuple[int, str, str]] = {}  # kind -> (session, value, text) of the last statement
    first_sessions = max(1, min(6, sessions - 2))
    named = {persona[k] for k in ("partner", "sister", "son", "friend")}  # one fact per other person
    #: facts about other people: (key, value, session, text, question)
    others: list[tuple[str, str, int, str, str]] = []
    for kind in kinds:
        value = kind.value(rng)
        s1 = rng.randrange(first_sessions)
        text = _fill(rng.choice(kind.statements), rng, {**persona, "v": value})
        planned[s1].append(Turn(s1, -1, text, kind.key, value))
        latest[kind.key] = (s1, value, text)
        if kind.key in updated and s1 + 2 < sessions:
            s2 = rng.randrange(s1 + 2, sessions)
            new = kind.value(rng)
            while new == value:
                new = kind.value(rng)
            text = _fill(rng.choice(kind.updates), rng, {**persona, "v": new, "old": value})
            planned[s2].append(Turn(s2, -1, text, kind.key, new))
            latest[kind.key] = (s2, new, text)
        pool = [(d, "") for d in kind.distractors] + list(kind.others)
        for _ in range(rng.randint(0, 2) if pool else 0):  # near-misses of this kind, anywhere
            s = rng.randrange(sessions)
            other = kind.value(rng)
            template, question = rng.choice(pool)
            who = _pick(FIRST_NAMES, rng, named)
            named.add(who)
            text = _fill(template, rng, {**persona, "v": other, "who": who})
            key = f"{kind.key}@{who}" if question else ""
            planned[s].append(Turn(s, -1, text, key, other))
            if question:
                others.append((key, other, s, text, _fill(question, rng, {**persona, "who": who})))
    for s in range(sessions):
        session = list(planned[s])
        while len(session) < turns:
            if rng.random() < 0.15:
                session.append(Turn(s, -1, rng.choice(FILLERS)))
            else:
                session.append(Turn(s, -1, _fill(rng.choice(CHITCHAT), rng, persona)))
        rng.shuffle(session)
        conv.sessions.append([Turn(s, i, t.text, t.fact, t.value) for i, t in enumerate(session)])
    gold_at = {(t.fact, t.value, t.session): (t.session, t.index) for t in conv.turns() if t.fact}
    for kind in kinds:
        session, value, text = latest[kind.key]
        question = _fill(rng.choice(kind.questions), rng, persona)
        style = "keyword" if content_words(question) & content_words(text) else "paraphrase"
        conv.questions.append(
            Question(
                user,
                question,
                kind.key,
                value,
                gold_at[(kind.key, value, session)],
                kind.key in updated and session > 0 and _stated_before(conv, kind.key, session),
                style,
            )
        )
    lookups = [k for k in kinds if k.lookups]
    texts = [t.text.lower() for t in conv.turns()]
    for kind in rng.sample(lookups, min(3, len(lookups))):
        session, value, text = latest[kind.key]
        if sum(value.lower() in x for x in texts) != 1:
            continue  # the value is in another memory too: the question would have two answers
        question = _fill(rng.choice(kind.lookups), rng, {**persona, "v": value})
        style = "keyword" if content_words(question) & content_words(text) else "paraphrase"
        conv.questions.append(
            Question(
                user, question, kind.key, value, gold_at[(kind.key, value, session)], False, style, "lookup"
            )
        )
    for key, value, session, text, question in others:
        style = "keyword" if content_words(question) & content_words(text) else "paraphrase"
        conv.questions.append(
            Question(user, question, key, value, gold_at[(key, value, session)], False, style, "other")
        )
    return conv


def _stated_before(conv: Conversation, key: str, session: int) -> bool:
    return any(t.fact == key and t.session < session for t in conv.turns())


def generate(users: int = 20, sessions: int = 10, turns: int = 30, seed: int = SEED) -> list[Conversation]:
    """``users`` conversations of ``sessions`` x ``turns`` user turns each, the same for the same seed."""
    rng = random.Random(seed)
    return [conversation(f"user-{i:03d}", rng, sessions, turns) for i in range(users)]


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def scale_texts(seed: int = SEED) -> Iterator[str]:
    """Distinct memory texts (facts, distractors and chit-chat of ever more synthetic users), endless."""
    rng = random.Random(seed + 1)
    seen: set[str] = set()
    n = 0
    while True:
        conv = conversation(f"scale-{n}", rng)
        n += 1
        for turn in conv.turns():
            key = _normalized(turn.text)
            if key not in seen:
                seen.add(key)
                yield turn.text


def scale_queries(count: int, seed: int = SEED) -> list[str]:
    """``count`` questions of the kind users ask their memory (with persona names filled in)."""
    rng = random.Random(seed + 2)
    out: list[str] = []
    while len(out) < count:
        kind = rng.choice(KINDS)
        out.append(_fill(rng.choice(kind.questions), rng, _persona(rng)))
    return out


def describe(conversations: list[Conversation]) -> str:
    turns = sum(1 for c in conversations for _ in c.turns())
    questions = [q for c in conversations for q in c.questions]
    distinct = len({_normalized(t.text) for c in conversations for t in c.turns()})
    return (
        f"{len(conversations)} users x {len(conversations[0].sessions)} sessions, {turns} turns "
        f"({distinct} distinct texts), {len(questions)} questions "
        f"({sum(q.updated for q in questions)} about updated facts, "
        f"{sum(q.style == 'paraphrase' for q in questions)} paraphrase, "
        f"{sum(q.style == 'keyword' for q in questions)} keyword)"
    )


if __name__ == "__main__":
    data = generate()
    print(describe(data))
    first = data[0]
    print(first.persona)
    for turn in first.sessions[0][:10]:
        label = f"   [{turn.fact}={turn.value}]" if turn.fact else ""
        print(f"  s{turn.session} t{turn.index}: {turn.text}{label}")
    for q in first.questions[:8]:
        gold = first.sessions[q.gold[0]][q.gold[1]].text
        print(f"  Q ({q.style}{', updated' if q.updated else ''}): {q.text}  ->  {gold}")
