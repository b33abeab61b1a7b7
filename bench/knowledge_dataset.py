"""Generated documents for the knowledge benchmarks: deterministic (seeded), offline, no downloads.

- :func:`corpus` -- markdown documents about fictional towns (headings, paragraphs of varied
  sentences), as many bytes as asked: the ingestion corpus.
- :func:`write_pdf` -- a PDF of N pages of the same kind of text (fpdf2, core fonts).
- :func:`chunk_texts` / :func:`search_queries` -- chunk-sized texts (about 120 words) and queries
  (3-6 words) drawn from a Zipf distribution over the model's English vocabulary, for the search
  benchmark.
- :func:`evaluation_set` -- the retrieval-quality set: town documents whose sections each state one
  fact, and for every fact two questions (one reusing the fact's words, one paraphrased), with the
  fact sentence as the relevance marker. See bench/knowledge_quality.py and docs/KNOWLEDGE.md.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path


def _words(text: str) -> list[str]:
    """A word list written as one string (a readable table of words)."""
    return text.split()


_SYLLABLES = _words(
    "ba be bi bo da de di do ka ke ki ko la le li lo ma me mi mo na ne ni no ra re ri ro sa se si so "
    "ta te ti to va ve vi vo zar mel dor ven lis tor bran quil hest morv"
)
_ADJECTIVES = _words(
    "quiet narrow busy ancient cobbled windy sunny crowded painted wooden stone hidden steep green "
    "famous modest colourful sleepy lively shaded"
)
_NOUNS = _words(
    "market square harbour bridge chapel library orchard mill granary fountain tannery workshop "
    "warehouse meadow vineyard brewery school museum theatre garden quay"
)
_VERBS = _words("visit admire photograph restore celebrate guard repair describe sketch explore")
_PEOPLE = _words("merchants weavers fishermen masons farmers monks sailors potters millers traders")
_GOODS = _words("wool salt timber amber copper linen cider honey glassware saffron")
_REGIONS = ["the northern coast", "the eastern valleys", "the capital", "the southern islands", "the hills"]
_MONTHS = _words("January February March April May June July August September October November December")
_RIVERS = _words("Alder Brennet Corran Dunmere Elsk Farrow Glenn Hollin Irwell Juniper")
_PORTS = ["Saltmarsh", "Greywater", "Kestrel Bay", "Harrowgate", "Oldhaven", "Pellinor", "Westreach"]
_INGREDIENTS = ["barley", "lentils", "chestnuts", "turnips", "white beans", "wild mushrooms", "leeks"]
_MEATS = _words("eel mutton trout pork duck herring")
_ARCHITECTS = ["Anselm Roderick", "Ilse Varga", "Tomas Brede", "Oriane Falk", "Edda Mirow", "Lucan Sterne"]
_GROUPS = [
    "shepherds from the uplands",
    "river traders",
    "exiled scholars",
    "salt miners",
    "a band of weavers",
]


def town_name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _sentence(rng: random.Random, town: str) -> str:
    form = rng.randrange(6)
    adj, noun, noun2 = rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_NOUNS)
    if form == 0:
        return f"Visitors to {town} often {rng.choice(_VERBS)} the {adj} {noun} near the {noun2}."
    if form == 1:
        return f"The {noun} of {town} stands beside a {adj} {noun2} that locals call the old quarter."
    if form == 2:
        return f"In winter the {noun} is {adj}, and the {rng.choice(_PEOPLE)} gather by the {noun2}."
    if form == 3:
        return f"Records kept at the {noun} describe how the {rng.choice(_PEOPLE)} of {town} lived."
    if form == 4:
        return f"A {adj} path leads from the {noun} to the {noun2}, lined with {rng.choice(_GOODS)} stalls."
    return f"Some say the {noun} was once a {noun2}, though no document in {town} proves it."


def _paragraph(rng: random.Random, town: str, sentences: int) -> str:
    return " ".join(_sentence(rng, town) for _ in range(sentences))


def corpus(total_bytes: int, seed: int = 7) -> str:
    """Markdown town guides (a title, 4-8 sections of 2-4 paragraphs) up to about ``total_bytes``."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < total_bytes:
        town = town_name(rng)
        doc = [f"# A guide to {town}\n"]
        for _ in range(rng.randint(4, 8)):
            doc.append(f"## The {rng.choice(_NOUNS)} of {town}\n")
            for _ in range(rng.randint(2, 4)):
                doc.append(_paragraph(rng, town, rng.randint(3, 7)) + "\n")
        text = "\n".join(doc) + "\n"
        parts.append(text)
        size += len(text.encode())
    return "".join(parts)


def write_pdf(path: Path, pages: int, seed: int = 11) -> Path:
    """A PDF of ``pages`` pages, each a heading and about 350 words."""
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_title("Town guides")
    for page in range(pages):
        town = town_name(rng)
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=14)
        # new_x/new_y: back to the left margin on the next line (the default stays at the right edge).
        pdf.multi_cell(0, 8, f"{page + 1}. A guide to {town}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10)
        for _ in range(3):
            pdf.multi_cell(0, 5, _paragraph(rng, town, 7), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    pdf.output(str(path))
    return path


def _vocabulary() -> tuple[list[str], list[float]]:
    """English words of the model's WordPiece vocabulary (whole words of 3+ letters, in the file's
    order, which roughly follows frequency) with Zipf weights 1/rank, returned cumulated: text with a
    realistic spread of common and rare words, so a lexical query matches some chunks, not all."""
    from sessionkit_server.retrieval.embeddings import default_model_path

    lines = (default_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words = [w for w in lines if w.isalpha() and w.isascii() and len(w) >= 3]
    # Cumulative weights, computed once (random.choices would sum them on every call).
    return words, list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))


def chunk_texts(count: int, seed: int = 13) -> list[str]:
    """``count`` distinct chunk-sized texts of about 120 words drawn from a Zipf distribution over the
    model's English vocabulary (sentences of 8-20 words)."""
    rng = random.Random(seed)
    words, weights = _vocabulary()
    out: list[str] = []
    for n in range(count):
        drawn = rng.choices(words, cum_weights=weights, k=120)
        sentences: list[str] = []
        while drawn:
            size = rng.randint(8, 20)
            sentence, drawn = drawn[:size], drawn[size:]
            sentences.append(" ".join(sentence).capitalize() + ".")
        out.append(f"{n}. " + " ".join(sentences))
    return out


def search_queries(count: int, seed: int = 17) -> list[str]:
    """Queries of 3-6 words from the same distribution as :func:`chunk_texts`."""
    rng = random.Random(seed)
    words, weights = _vocabulary()
    return [" ".join(rng.choices(words, cum_weights=weights, k=rng.randint(3, 6))) for _ in range(count)]


# -- the retrieval-quality set -------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    text: str
    #: "lexical" (reuses the fact's key words) or "paraphrase" (says it in other words).
    kind: str
    #: The fact sentence: a chunk is relevant when it contains it.
    fact: str
    town: str
    topic: str


@dataclass(frozen=True)
class EvaluationSet:
    documents: dict[str, str]  # name -> markdown
    questions: list[Question]


def _facts(rng: random.Random, town: str) -> list[tuple[str, str, str, str]]:
    """(topic, fact sentence, lexical question, paraphrased question) for one town."""
    year, founded = rng.randint(1650, 1910), rng.randint(900, 1500)
    architect = rng.choice(_ARCHITECTS)
    good, region = rng.choice(_GOODS), rng.choice(_REGIONS)
    month, river = rng.choice(_MONTHS), rng.choice(_RIVERS)
    port, hours = rng.choice(_PORTS), rng.randint(2, 9)
    ingredient, meat = rng.choice(_INGREDIENTS), rng.choice(_MEATS)
    group = rng.choice(_GROUPS)
    return [
        (
            "Landmarks",
            f"The {town} clock tower was built in {year} by the architect {architect}.",
            f"Who built the clock tower in {town}?",
            f"Which designer is behind the big timepiece landmark of {town}?",
        ),
        (
            "Economy",
            f"Most families in {town} earn their living from {good} exports to {region}.",
            f"What does {town} export?",
            f"How do households in {town} make money?",
        ),
        (
            "Festivals",
            f"Every {month}, {town} holds a lantern festival on the {river} river.",
            f"When is the lantern festival of {town}?",
            f"In which month does {town} celebrate with floating lights on the water?",
        ),
        (
            "Transport",
            f"A narrow-gauge railway links {town} with the port of {port}, a trip of {hours} hours.",
            f"Which port does the railway from {town} reach?",
            f"How long is the train ride from {town} to the sea?",
        ),
        (
            "Cuisine",
            f"The signature dish of {town} is a stew of {ingredient} and smoked {meat}.",
            f"What is the signature dish of {town}?",
            f"What should I eat for a typical meal in {town}?",
        ),
        (
            "History",
            f"{town} was founded in {founded} by {group} fleeing a long drought.",
            f"When was {town} founded?",
            f"Who were the first settlers of {town} and why did they come?",
        ),
    ]


def evaluation_set(towns: int, seed: int = 23) -> EvaluationSet:
    """``towns`` town documents with six sections each (one fact per section among filler text about
    the town), and two questions per fact."""
    rng = random.Random(seed)
    documents: dict[str, str] = {}
    questions: list[Question] = []
    names: set[str] = set()
    while len(documents) < towns:
        town = town_name(rng)
        if town in names:
            continue
        names.add(town)
        sections = [f"# {town}\n"]
        for topic, fact, lexical, paraphrase in _facts(rng, town):
            body = [_sentence(rng, town) for _ in range(rng.randint(3, 5))]
            body.insert(rng.randint(0, len(body)), fact)
            sections.append(f"## {topic}\n\n" + " ".join(body) + "\n")
            questions.append(Question(lexical, "lexical", fact, town, topic))
            questions.append(Question(paraphrase, "paraphrase", fact, town, topic))
        documents[f"{town.lower()}.md"] = "\n".join(sections)
    return EvaluationSet(documents, questions)
