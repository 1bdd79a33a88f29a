"""A second benchmark dataset: short chat examples (about 55 tokens each with SmolLM2's chat template,
one-line answers), generated from a seed so every run trains on the same rows.

    .venv/bin/python bench/short_data.py OUT.jsonl [--rows 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "garden",
    "window",
    "planet",
    "river",
    "basket",
    "silver",
    "candle",
    "forest",
    "button",
    "marble",
    "pepper",
    "rocket",
    "violin",
    "ladder",
    "castle",
    "harbor",
    "meadow",
    "lantern",
    "pillow",
    "saddle",
)


def short_examples(rows: int = 400, seed: int = 0) -> list[dict]:
    """`rows` conversations of one question and a one-line answer (sums, comparisons, reversed words)."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        kind = i % 3
        if kind == 0:
            question, answer = f"Add {a} and {b}. Answer in one line.", f"{a} plus {b} is {a + b}."
        elif kind == 1:
            if a == b:
                b += 1
            question = f"Which number is larger, {a} or {b}? One line."
            answer = f"{max(a, b)} is larger than {min(a, b)}."
        else:
            word = rng.choice(WORDS)
            question, answer = f"Write the word '{word}' backwards, nothing else.", word[::-1]
        out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return out


def write_short_data(path: str | Path, rows: int = 400, seed: int = 0) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in short_examples(rows, seed)))
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_short_data(a.out, a.rows, a.seed))
