"""The value pools of the synthetic memory data set (bench/memory_dataset.py): names, places, jobs,
foods, hobbies and the other values facts are made of, the chit-chat fillers, and the random picks
made from them."""

from __future__ import annotations

import random

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
