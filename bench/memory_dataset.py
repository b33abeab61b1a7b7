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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SEED = 7

# -- value pools ----------------------------------------------------------------------------------------


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = words(
    "Amara Bastian Chiara Dmitri Elif Farid Greta Hamid Ingrid Jonas Keiko Lars Mateo Nadia Oskar Priya "
    "Quentin Rosa Soren Tamsin Umar Valeria Wendell Ximena Yusuf Zofia Anton Beatriz Cyrus Delphine "
    "Emeka Freya Gideon Hana Ilias Jana Kofi Leila Milan Noor Otto Paloma Rafael Sanne Tobias Uma "
    "Vikram Wren Yara Zeno Aurelio Bryony Cosmin Dagny Evander Fenna Goran Halima Ines Joaquin"
)
CITIES = words(
    "Lisbon Porto Valencia Bologna Krakow Ghent Tallinn Ljubljana Bergen Aarhus Leipzig Lyon Seville "
    "Galway Edinburgh Utrecht Graz Brno Turku Malmo Dresden Toulouse Bilbao Palermo Salzburg Riga "
    "Vilnius Geneva Antwerp Gothenburg Montreal Halifax Portland Denver Austin Adelaide Wellington "
    "Kyoto Sapporo Busan Taipei Hanoi Chiang-Mai Cusco Valparaiso Mendoza Oaxaca Cartagena"
)
JOBS = (
    "pediatric nurse",
    "data analyst",
    "structural engineer",
    "high school chemistry teacher",
    "UX designer",
    "veterinary surgeon",
    "airline pilot",
    "pastry chef",
    "patent lawyer",
    "physiotherapist",
    "backend developer",
    "museum curator",
    "electrician",
    "landscape architect",
    "financial auditor",
    "speech therapist",
    "park ranger",
    "translator",
    "radiographer",
    "product manager",
)
EMPLOYERS = (
    "Brightwell Clinic",
    "Northfield Logistics",
    "Hollowbrook Insurance",
    "Tidewater Energy",
    "Quillstone Press",
    "Marrow & Finch Architects",
    "Copperleaf Software",
    "Lindqvist Shipping",
    "Saltmarsh Foods",
    "Ravenscar Bank",
    "Greyfield Robotics",
    "Amberline Rail",
    "Juniper Health",
    "Orchard Lane Studios",
    "Westbury Council",
)
DOG_NAMES = words(
    "Biscuit Pepper Juno Marlowe Nacho Pixel Tofu Waffles Bruno Clementine Ziggy Olive Rocket Mochi"
)
ALLERGENS = (
    "peanuts",
    "shellfish",
    "penicillin",
    "sesame",
    "kiwi fruit",
    "cats",
    "bee stings",
    "hazelnuts",
    "latex",
    "celery",
)
DIETS = ("vegetarian", "vegan", "pescatarian", "gluten-free", "low-carb", "dairy-free")
COFFEES = (
    "oat flat white",
    "double espresso",
    "iced americano",
    "cortado",
    "black filter coffee",
    "chai latte",
    "decaf cappuccino",
    "matcha latte",
)
SEATS = ("aisle", "window")
HOURS = ("9 am", "10 am", "half past nine", "11 am", "8:30")
MONTHS = words("January February March April May June July August September October November December")
WEEKDAYS = words("Monday Tuesday Wednesday Thursday Friday Saturday")
INSTRUMENTS = ("cello", "piano", "violin", "drums", "ukulele", "saxophone", "bass guitar", "trumpet")
LANGUAGES = ("Japanese", "Portuguese", "Korean", "Italian", "Turkish", "Dutch", "Swahili", "Greek")
CARS = (
    "blue Toyota Corolla",
    "red Skoda Octavia",
    "grey Tesla Model 3",
    "green Volvo estate",
    "white Fiat Panda",
    "black Mazda CX-5",
    "silver Honda Jazz",
    "yellow Renault Zoe",
)
CLUBS = (
    "Riverside Rovers",
    "Ashford Athletic",
    "Kingsbridge United",
    "Harrowgate Town",
    "Eastmoor City",
    "Millbank Wanderers",
)
BOOKS = (
    "The Salt Orchard",
    "A Map of Quiet Rivers",
    "The Glass Lighthouse",
    "Nine Winters in Oslo",
    "The Cartographer's Daughter",
    "Small Gods of August",
    "The Last Tram Home",
    "Paper Moons",
)
DISHES = (
    "mushroom risotto",
    "lamb tagine",
    "pad thai",
    "shakshuka",
    "ramen",
    "paella",
    "butter chicken",
    "pierogi",
    "moussaka",
    "bibimbap",
)
RACES = ("Berlin", "Chicago", "Valencia", "Tokyo", "Boston", "Amsterdam")
TOPICS = (
    "the quarterly report",
    "the leaking roof",
    "the school trip",
    "our shared expenses",
    "the conference talk",
    "the late invoice",
    "the team offsite",
    "the broken dishwasher",
    "the parking permit",
    "the volunteer rota",
    "the insurance claim",
    "the birthday surprise",
)
THINGS = (
    "autumn leaves",
    "a lighthouse",
    "the first snow",
    "a cat on a windowsill",
    "Monday mornings",
    "the ocean at night",
    "an old bicycle",
    "city rain",
    "a lost umbrella",
    "a thunderstorm",
)
PY_TASKS = (
    "reverse a list",
    "read a CSV file",
    "sort a dictionary by value",
    "parse a date string",
    "merge two dictionaries",
    "remove duplicates from a list",
    "write a unit test",
    "make an HTTP request",
    "flatten a nested list",
    "time a function",
)
ANIMALS = ("octopuses", "crows", "axolotls", "honeybees", "sea otters", "tardigrades", "owls", "elephants")
WEATHER = ("awful", "glorious", "grey and windy", "surprisingly warm", "freezing", "humid")
ADJECTIVES = ("brutal", "endless", "chaotic", "quiet for once", "exhausting", "weirdly fun")
PAIRS = (
    ("a latte", "a flat white"),
    ("TCP", "UDP"),
    ("weather", "climate"),
    ("baking soda", "baking powder"),
    ("a virus", "a bacterium"),
    ("stocks", "bonds"),
    ("affect", "effect"),
    ("a crocodile", "an alligator"),
)
DILEMMAS = (
    "repaint the living room this weekend",
    "buy a standing desk",
    "take the night train instead of flying",
    "sign up for the pottery class",
    "switch to a cheaper phone plan",
    "ask for a raise next month",
    "cancel the gym membership",
    "learn to bake sourdough",
)
FILLERS = (
    "thanks!",
    "Thanks, that's really helpful.",
    "ok, sounds good",
    "haha, love it",
    "Perfect, that's exactly what I needed.",
    "Hmm, not sure about that one.",
    "Can you make it shorter?",
    "Let's come back to this tomorrow.",
)


def _pick(pool: tuple[str, ...], rng: random.Random, avoid: set[str]) -> str:
    while True:
        value = rng.choice(pool)
        if value not in avoid:
            return value


def _birthday(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


def _appointment(rng: random.Random) -> str:
    hour = rng.choice(("9", "10", "11", "2", "3", "4"))
    return f"{rng.choice(WEEKDAYS)} at {hour} {rng.choice(('am', 'pm'))}"


# -- fact kinds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactKind:
    """Templates of one kind of fact. ``{v}`` is the value, ``{old}`` the previous value (updates);
    ``{partner}``, ``{sister}``, ``{son}``, ``{friend}``, ``{month}`` come from the persona, ``{who}``
    is somebody else (distractors)."""

    key: str
    value: Callable[[random.Random], str]
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    updates: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    #: (statement about somebody else, {who}, and a question whose answer it is)
    others: tuple[tuple[str, str], ...] = ()
    #: questions that quote the value ({v}) and ask what it is about
    lookups: tuple[str, ...] = ()


def _values(pool: tuple[str, ...] | list[str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


KINDS: tuple[FactKind, ...] = (
    FactKind(
        "home_city",
        _values(CITIES),
        (
            "I live in {v}.",
            "Home for me is a small flat in {v}, up on the fourth floor.",
            "I've been living in {v} for about three years now.",
        ),
        ("Which city do I live in?", "Where is home for me these days?", "Remind me where I'm based."),
        (
            "Big news: we moved, I live in {v} now.",
            "We finally relocated from {old} to {v} last month.",
        ),
        ("I might visit {v} someday, it looks lovely.",),
        (("My friend {who} just moved to {v}.", "Which city did {who} move to?"),),
    ),
    FactKind(
        "job",
        _values(JOBS),
        ("I work as a {v}.", "I'm a {v} by profession.", "Work is busy, being a {v} is never boring."),
        ("What do I do for a living?", "What's my profession?", "What kind of work do I do?"),
        ("I changed careers and I'm working as a {v} now.", "I quit being a {old}; I'm a {v} now."),
        ("I once thought about becoming a {v}.",),
        (("My cousin {who} works as a {v}.", "What is {who}'s job?"),),
    ),
    FactKind(
        "employer",
        _values(EMPLOYERS),
        ("My employer is {v}.", "I've been at {v} since 2019.", "I got my badge today, I work at {v}."),
        ("Which company do I work for?", "Who is my employer?", "Where do I have my job?"),
        ("I accepted an offer from {v}; my last day at {old} is Friday.",),
        (),
        (("{who} has an interview at {v} next week.", "Where is {who} interviewing?"),),
        lookups=("What do I have to do with {v}?",),
    ),
    FactKind(
        "dog",
        _values(DOG_NAMES),
        ("Our dog is called {v}.", "We adopted a rescue beagle and named him {v}."),
        ("What's my dog's name?", "What did we name our puppy?", "What is our pet called?"),
        (),
        ("My neighbour's dog is called {v}.",),
        (("{who} wants to name her kitten {v}.", "What name did {who} pick for the kitten?"),),
        lookups=("Who is {v}?",),
    ),
    FactKind(
        "partner_job",
        _values(JOBS),
        ("My partner {partner} is a {v}.", "{partner} started working as a {v} this year."),
        ("What does my partner do for work?", "What is {partner}'s occupation?"),
        ("{partner} switched jobs, {partner} is a {v} now.",),
        (),
        (("{who}'s husband is a {v}.", "What does {who}'s husband do?"),),
    ),
    FactKind(
        "sister_city",
        _values(CITIES),
        ("My sister {sister} lives in {v}.", "{sister}, my younger sister, has a house in {v}."),
        ("Where does my sister live?", "In which city is {sister} based?"),
        ("My sister {sister} moved to {v}.",),
        (),
        (("{who}'s sister lives in {v}.", "Where does {who}'s sister live?"),),
        lookups=("Who do I know in {v}?",),
    ),
    FactKind(
        "allergy",
        _values(ALLERGENS),
        (
            "I'm allergic to {v}.",
            "Just so you know, {v} give me a bad allergic reaction.",
            "I'm allergic to {v}, so keep that in mind for recipes.",
        ),
        (
            "What am I allergic to?",
            "Is there anything that makes me react badly?",
            "What should I avoid for health reasons?",
        ),
        (),
        ("Is it common to be allergic to {v}?",),
        (("My colleague {who} is allergic to {v}.", "What is {who} allergic to?"),),
    ),
    FactKind(
        "diet",
        _values(DIETS),
        ("I eat a {v} diet.", "I went {v} a couple of years ago."),
        ("What kind of diet do I follow?", "Are there foods I skip for lifestyle reasons?"),
        ("I'm not {old} anymore, I've gone {v}.",),
        (),
        (("{who} is trying a {v} diet this month.", "Which diet is {who} trying?"),),
    ),
    FactKind(
        "coffee",
        _values(COFFEES),
        ("My usual coffee order is an {v}.", "Every morning I grab an {v} on the way to work."),
        ("How do I take my coffee?", "What do I usually order at the café?"),
        ("I've switched: my usual coffee order is a {v} now.",),
        (),
        (("{who} always orders a {v}.", "What does {who} drink at the café?"),),
    ),
    FactKind(
        "seat",
        _values(SEATS),
        ("Please always book me an {v} seat on flights.", "On planes I really need the {v} seat."),
        ("Which seat should you pick for me when I fly?", "What's my preference when booking a plane?"),
        (),
        (),
        (("{who} insists on the {v} seat on trains.", "Which seat does {who} want on trains?"),),
    ),
    FactKind(
        "meetings",
        _values(HOURS),
        (
            "Please don't schedule meetings before {v}, I'm not a morning person.",
            "No calls before {v} for me, ever.",
        ),
        (
            "What's the earliest time I'm willing to take a call?",
            "Before what time should you not book my meetings?",
        ),
        ("New rule: no meetings before {v} anymore.",),
        (),
        (("{who}'s standup starts at {v}.", "When does {who}'s standup begin?"),),
    ),
    FactKind(
        "trip",
        _values(CITIES),
        ("I'm planning a trip to {v} in {month}.", "We booked flights to {v} for our {month} holiday."),
        ("Where am I going on vacation?", "What's the destination of my {month} trip?"),
        ("Change of plans: we're going to {v} instead of {old}.",),
        (),
        (("{who} just got back from {v}.", "Where was {who} travelling recently?"),),
        lookups=("Why did I mention {v}?",),
    ),
    FactKind(
        "locker",
        lambda rng: str(rng.randint(1000, 9999)),
        ("My gym locker code is {v}.", "Note to self: locker combination {v}."),
        ("What's the combination for my locker at the gym?", "Which number opens my gym locker?"),
        ("They reset the lockers; my new gym locker code is {v}.",),
        ("The door code for the office building is {v}.", "My old bike lock was {v}."),
        (),
        lookups=("What does the number {v} open?",),
    ),
    FactKind(
        "budget",
        lambda rng: str(rng.randrange(8000, 40000, 500)),
        ("Our budget for the kitchen renovation is {v} euros.",),
        ("How much money can we spend on redoing the kitchen?", "What's the renovation budget?"),
        ("We raised the kitchen renovation budget to {v} euros.",),
        (),
        (("{who} spent {v} euros on their bathroom.", "How much did {who} pay for the bathroom?"),),
        lookups=("What are the {v} euros for?",),
    ),
    FactKind(
        "son_birthday",
        _birthday,
        ("My son {son}'s birthday is on {v}.", "{son} turns seven on {v}, we're planning a party."),
        ("When is my son's birthday?", "On what date do we celebrate {son}?"),
        (),
        (),
        (("{who}'s daughter was born on {v}.", "When is {who}'s daughter's birthday?"),),
        lookups=("What's special about {v}?",),
    ),
    FactKind(
        "instrument",
        _values(INSTRUMENTS),
        ("I've started taking {v} lessons.", "I practise the {v} every evening after dinner."),
        ("Which instrument am I learning?", "What music lessons did I sign up for?"),
        ("I gave up on the {old} and started learning the {v}.",),
        (),
        (("{who} plays the {v} in a band.", "What does {who} play in the band?"),),
        lookups=("What's the deal with the {v}?",),
    ),
    FactKind(
        "language",
        _values(LANGUAGES),
        ("I'm learning {v} on Duolingo every night.", "My {v} classes start next week."),
        ("What language am I studying?", "Which foreign language am I working on?"),
        ("I dropped {old} and switched to learning {v}.",),
        (),
        (("{who} speaks fluent {v}.", "Which language is {who} fluent in?"),),
    ),
    FactKind(
        "car",
        _values(CARS),
        ("I drive a {v}.", "My car is a {v}, nothing fancy."),
        ("What car do I drive?", "What's my vehicle?"),
        ("We sold the old car and bought a {v}.",),
        ("My brother-in-law just bought a {v}.",),
        (),
        lookups=("What did I say about the {v}?",),
    ),
    FactKind(
        "club",
        _values(CLUBS),
        ("I'm a lifelong {v} supporter.", "Nothing beats watching {v} play on a Saturday."),
        ("Which football club do I support?", "What team do I cheer for?"),
        (),
        (),
        (("{who} has a season ticket for {v}.", "Which club does {who} have a season ticket for?"),),
        lookups=("Why do I care about {v}?",),
    ),
    FactKind(
        "dentist",
        _appointment,
        ("My dentist appointment is on {v}.", "Dentist checkup booked for {v}."),
        ("When am I seeing the dentist?", "When is my next dental checkup?"),
        ("The dentist moved my appointment to {v}.",),
        (),
        (("{who}'s physio session is on {v}.", "When is {who}'s physio appointment?"),),
        lookups=("What's happening on {v}?",),
    ),
    FactKind(
        "book",
        _values(BOOKS),
        ("I'm currently reading {v}.", "I can't put down {v}, it's so good."),
        ("What book am I reading at the moment?", "Which novel have I been enjoying lately?"),
        ("I finished {old} and started {v}.",),
        (),
        (("{who} recommended {v} to me.", "Which book did {who} recommend?"),),
        lookups=("What did I tell you about {v}?",),
    ),
    FactKind(
        "anniversary",
        _birthday,
        ("Our wedding anniversary is on {v}.", "{partner} and I got married on {v}."),
        (
            "When do my partner and I celebrate our anniversary?",
            "What's the date of our wedding anniversary?",
        ),
        (),
        (),
        (("{who}'s wedding is on {v}.", "When is {who} getting married?"),),
        lookups=("What are we celebrating on {v}?",),
    ),
    FactKind(
        "dish",
        _values(DISHES),
        ("My favourite dish is {v}.", "I could eat {v} every single day."),
        ("What do I love eating most?", "What's my favourite food?"),
        ("These days my favourite dish is {v}.",),
        (),
        (("{who} cooked {v} for us last night.", "What did {who} cook for us?"),),
    ),
    FactKind(
        "race",
        _values(RACES),
        ("I'm training for the {v} marathon.", "I signed up for the {v} marathon in the autumn."),
        ("Which race am I preparing for?", "What marathon did I enter?"),
        ("I switched my registration to the {v} marathon.",),
        (),
        (("{who} ran the {v} marathon last year.", "Which marathon did {who} run?"),),
        lookups=("What's going on with {v}?",),
    ),
)
KIND_BY_KEY = {kind.key: kind for kind in KINDS}

CHITCHAT: tuple[str, ...] = (
    "Can you help me write an email to {who} about {topic}?",
    "What's a good recipe for {dish}?",
    "Write a short poem about {thing}.",
    "How do I {task} in Python?",
    "I'm exhausted today, work was {adj}.",
    "The weather in {city} was {weather} today.",
    "Do you think I should {dilemma}?",
    "Tell me a fun fact about {animal}.",
    "What's the difference between {a} and {b}?",
    "Can you summarise {topic} for {who} in three bullet points?",
    "Remind me to call {who} on {weekday}.",
    "{who} says hi, by the way.",
    "Give me three ideas for a {weekday} dinner that isn't {dish}.",
    "Translate 'good morning' into {language}.",
    "How long does it take to drive from {city} to {city2}?",
    "What should I pack for a weekend in {city}?",
    "Any tips for staying focused on a {adj} {weekday}?",
    "Explain {a} versus {b} like I'm five.",
    "Draft a polite reply to {who} saying I can't make it on {weekday}.",
    "I watched a documentary about {animal} last night.",
)

STOP_WORDS = frozenset(
    words(
        "a an the i i'm i've me my we we're our us you your is are was were be been am do does did what "
        "what's which who whom where when how why for of to in on at by with from about into and or "
        "but not no so that this these those it its it's there then than as any anything every some "
        "should would can could will just now these days time"
    )
)


def content_words(text: str) -> set[str]:
    """Lower-cased words that are not stop words, as 5-letter prefixes (a crude stemmer)."""
    return {w[:5] for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in STOP_WORDS and len(w) > 1}


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
