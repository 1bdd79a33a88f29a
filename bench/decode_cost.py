"""What one decoding step costs against a batched forward: the constants of reinforcement's time estimate.

Reinforcement samples its answers token by token: each decoding step runs the model over one new token of each
of R sequences. This times `generate` (R rows, a fixed number of new tokens, sampling) against the best of two
batched forwards over the same rows at full length, and prints the cost of one answer token in batched-forward
tokens for each R. `worker.estimate` models it as DECODE_STEP_TOKENS / R + DECODE_ROW_COST.

    python bench/decode_cost.py [--model var/models/SmolLM2-135M-Instruct] [--rows 8 32] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"


def decode_ratio(model, rows: int, prompt: int, answer: int) -> tuple[float, float]:
    """(seconds per token of a batched forward, seconds per answer token of sampling) for `rows` sequences."""
    import torch

    ids = torch.randint(100, 20000, (rows, prompt))
    with torch.no_grad():
        model(ids[:2, :8])  # warm the kernels
        forward = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            model(torch.randint(100, 20000, (rows, prompt + answer)))
            forward = min(forward, time.perf_counter() - started)
        started = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=answer,
            min_new_tokens=answer,
            do_sample=True,
            top_k=0,
            pad_token_id=0,
        )
        sampling = time.perf_counter() - started
    return forward / (rows * (prompt + answer)), sampling / (rows * answer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--rows", type=int, nargs="+", default=[8, 32])
    p.add_argument("--tokens", type=int, default=48, help="prompt tokens, and answer tokens")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    print("| rows | forward s/token | sampling s/answer token | ratio |\n|---:|---:|---:|---:|")
    for rows in args.rows:
        forward, sampling = decode_ratio(model, rows, args.tokens, args.tokens)
        print(f"| {rows} | {forward:.2e} | {sampling:.2e} | {sampling / forward:.1f} |", flush=True)


if __name__ == "__main__":
    main()
