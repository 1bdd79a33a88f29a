"""Deterministic generator for LoRA Studio's one-click demo dataset.

Task: read a one-sentence message about an appointment / trip / event and answer with nothing but
compact JSON with three fixed keys, the date normalised to ISO format::

    user:      "Reminder: Priya Nair's workshop is in Lisbon on March 7, 2025."
    assistant: {"name":"Priya Nair","city":"Lisbon","date":"2025-03-07"}

The base SmolLM2-135M-Instruct answers such messages with chatty prose; after a short LoRA run it
answers with the JSON. There is no system prompt, so the side-by-side chat needs nothing but the
user's message to show the difference.

Names and cities are split into a training pool and a held-out pool, and the evaluation file also
uses a few sentence templates that never occur in training, so the eval file measures
generalisation rather than memorisation.

Run:  python worker/demo_data/generate.py     (writes demo_dataset.jsonl and demo_eval.jsonl
                                                next to this file; output is byte-for-byte stable)
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

ChatRow = dict[str, list[dict[str, str]]]  # one {"messages": [...]} line

SEED = 20250101
N_TRAIN = 160
N_EVAL = 20

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "demo_dataset.jsonl"
EVAL_FILE = HERE / "demo_eval.jsonl"

FIRST_NAMES = [
    "Anna",
    "Ben",
    "Carlos",
    "Dana",
    "Elif",
    "Farah",
    "George",
    "Hana",
    "Ivan",
    "Julia",
    "Kofi",
    "Laura",
    "Mateo",
    "Nina",
    "Omar",
    "Paula",
    "Quentin",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Yuki",
    "Zoe",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pedro",
    "Ravi",
    "Sofia",
    "Tomas",
    "Amara",
    "Erik",
    "Ingrid",
    "Jamal",
    "Keiko",
    "Lucia",
    "Marek",
]
LAST_NAMES = [
    "Adams",
    "Berg",
    "Costa",
    "Diaz",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Usman",
    "Varga",
    "Walsh",
    "Young",
    "Zhang",
    "Novak",
    "Silva",
    "Kim",
    "Murphy",
    "Hansen",
]
CITIES = [
    "Lisbon",
    "Berlin",
    "Madrid",
    "Paris",
    "Rome",
    "Vienna",
    "Prague",
    "Oslo",
    "Dublin",
    "Athens",
    "Warsaw",
    "Budapest",
    "Amsterdam",
    "Brussels",
    "Zurich",
    "Helsinki",
    "Stockholm",
    "Copenhagen",
    "Edinburgh",
    "Munich",
    "Milan",
    "Barcelona",
    "Toronto",
    "Chicago",
    "Boston",
    "Seattle",
    "Denver",
    "Austin",
    "Sydney",
    "Melbourne",
    "Tokyo",
    "Osaka",
    "Seoul",
    "Singapore",
    "Mumbai",
    "Nairobi",
    "Cairo",
    "Lagos",
    "Lima",
    "Bogota",
    "Santiago",
    "Montreal",
    "Vancouver",
    "Hamburg",
    "Lyon",
]
# Held out: only ever used in the evaluation file.
EVAL_FIRST_NAMES = ["Aisha", "Bruno", "Chloe", "Dmitri", "Emma", "Felix", "Grace", "Hugo", "Isla", "Jonas"]
EVAL_LAST_NAMES = ["Andersson", "Becker", "Castillo", "Dubois", "Evans", "Ferreira", "Gruber", "Holm"]
EVAL_CITIES = [
    "Porto",
    "Krakow",
    "Geneva",
    "Valencia",
    "Florence",
    "Bergen",
    "Kyoto",
    "Auckland",
    "Cape Town",
    "Tallinn",
]
EVAL_CITIES = [c for c in EVAL_CITIES if c not in CITIES]

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
YEARS = [2024, 2025, 2026]


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# Ways of writing a date in the message; the answer is always YYYY-MM-DD.
DATE_FORMATS = [
    lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",  # March 7, 2025
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",  # 7 March 2025
    lambda y, m, d: f"{MONTHS[m - 1]} {_ordinal(d)}, {y}",  # March 7th, 2025
    lambda y, m, d: f"the {_ordinal(d)} of {MONTHS[m - 1]} {y}",  # the 7th of March 2025
    lambda y, m, d: f"{MONTHS[m - 1][:3]} {d} {y}",  # Mar 7 2025
    lambda y, m, d: f"{y}-{m:02d}-{d:02d}",  # 2025-03-07
]

# {name}, {city}, {date}; "on {date}" is written by the template where needed.
TEMPLATES = [
    "Hi, this is {name}. Can we meet in {city} on {date}?",
    "{name} will be giving a talk in {city} on {date}.",
    "Please book a hotel room in {city} for {name}, arriving on {date}.",
    "Reminder: {name}'s workshop takes place in {city} on {date}.",
    "On {date}, {name} is flying to {city} for the conference.",
    "Dinner with {name} in {city} on {date}, don't forget!",
    "{name} asked to move our meeting to {date}, still in {city}.",
    "Hey! {name} here, I'll be in {city} on {date}. Coffee?",
    "The {city} office is expecting {name} on {date}.",
    "Team offsite in {city} on {date}, organised by {name}.",
    "Can you send {name} the tickets for the concert in {city} on {date}?",
    "{name} is getting married in {city} on {date} and we're invited.",
    "Interview scheduled with {name} on {date} at the {city} branch.",
    "My sister {name} arrives in {city} on {date}.",
    "Please note that {name} starts the new job in {city} on {date}.",
    "{name} wants to visit the {city} factory on {date}.",
    "Save the date: {name} is hosting a party in {city} on {date}.",
    "Could you arrange a taxi for {name} in {city} on {date}?",
    "We are meeting {name} on {date} near the station in {city}.",
    "{name} confirmed the training session in {city} for {date}.",
    "Lunch on {date} with {name}, who is visiting {city}.",
    "New booking: {name}, {city}, {date}.",
    "Just a heads-up that {name} will present in {city} on {date}.",
    "The client meeting with {name} is set for {date} in {city}.",
]
# Held out: phrasings that only appear in the evaluation file.
EVAL_TEMPLATES = [
    "Good news, {name} accepted our invitation to speak in {city} on {date}.",
    "I'm picking up {name} from the airport in {city} on {date}.",
    "Put this in the calendar: {city}, {date}, meeting with {name}.",
    "{name} is running the marathon in {city} on {date}!",
]


def _answer(name: str, city: str, year: int, month: int, day: int) -> str:
    return json.dumps(
        {"name": name, "city": city, "date": f"{year}-{month:02d}-{day:02d}"}, ensure_ascii=False, separators=(",", ":")
    )


def make_example(
    rng: random.Random,
    first_names: Sequence[str],
    last_names: Sequence[str],
    cities: Sequence[str],
    templates: Sequence[str],
) -> ChatRow:
    name = f"{rng.choice(first_names)} {rng.choice(last_names)}"
    city = rng.choice(cities)
    year, month = rng.choice(YEARS), rng.randint(1, 12)
    day = rng.randint(1, DAYS_IN_MONTH[month - 1])
    date_text = rng.choice(DATE_FORMATS)(year, month, day)
    template = rng.choice(templates)
    text = template.format(name=name, city=city, date=date_text)
    if text.startswith("the "):  # "the 7th of March ..." opening a sentence
        text = "T" + text[1:]
    return {
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": _answer(name, city, year, month, day)},
        ]
    }


def generate(n_train: int = N_TRAIN, n_eval: int = N_EVAL, seed: int = SEED) -> tuple[list[ChatRow], list[ChatRow]]:
    rng = random.Random(seed)
    train: list[ChatRow] = []
    seen: set[str] = set()
    while len(train) < n_train:
        ex = make_example(rng, FIRST_NAMES, LAST_NAMES, CITIES, TEMPLATES)
        key = ex["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            train.append(ex)

    eval_rng = random.Random(seed + 1)
    evals: list[ChatRow] = []
    for i in range(n_eval):
        # Every example has at least one held-out element; half also use a held-out template.
        first = EVAL_FIRST_NAMES if i % 2 == 0 else FIRST_NAMES
        last = EVAL_LAST_NAMES if i % 4 in (0, 1) else LAST_NAMES
        cities = EVAL_CITIES if i % 2 == 1 else CITIES + EVAL_CITIES
        templates = EVAL_TEMPLATES if i % 2 == 0 else TEMPLATES
        evals.append(make_example(eval_rng, first, last, cities, templates))
    return train, evals


def write_jsonl(path: Path, rows: list[ChatRow]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    train, evals = generate()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / TRAIN_FILE.name, train)
    write_jsonl(args.out_dir / EVAL_FILE.name, evals)
    print(f"wrote {len(train)} training and {len(evals)} eval examples to {args.out_dir}")


if __name__ == "__main__":
    main()
