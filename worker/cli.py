"""Command line for the engine, with no database or web server.

python -m worker.cli train spec.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from worker.config import TrainSpec
from worker.data.problems import DatasetError
from worker.engine import train
from worker.errors import InputError, TrainingError
from worker.reporting import MemoryReporter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train an adapter from a spec JSON file")
    p_train.add_argument("spec", help="path to a TrainSpec JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with open(args.spec, encoding="utf-8") as fh:
            spec = TrainSpec.from_dict(json.load(fh))
        result = train(spec, MemoryReporter(echo=True))
    except (InputError, DatasetError, TrainingError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
