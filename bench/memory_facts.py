"""The fact kinds of the synthetic memory data set (bench/memory_dataset.py): each kind's values and
the templates that state, update, ask about and look up a fact; the chit-chat templates; and the
content words that tag a question "keyword" or "paraphrase"."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from memory_pools import (
    ALLERGENS,
    BOOKS,
    CARS,
    CITIES,
    CLUBS,
    COFFEES,
    DIETS,
    DISHES,
    DOG_NAMES,
    EMPLOYERS,
    HOURS,
    INSTRUMENTS,
    JOBS,
    LANGUAGES,
    RACES,
    SEATS,
    _appointment,
    _birthday,
    words,
)

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
