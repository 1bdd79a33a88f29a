#!/usr/bin/env bash
# Every CUDA path of LoRA Studio on this machine, with figures (see bench/gpu_check.py for what and how):
# LoRA bf16 and QLoRA NF4 on a ~0.46B model (tokens/s, peak GPU memory, MFU), paged 8-bit AdamW with a
# checkpoint round trip, DDP and FSDP on 2 GPUs when there are 2, and the chat worker's batched generation.
#
#   bench/gpu_check.sh                          # builds a random-weight ~0.46B Llama, offline
#   GPU_CHECK_MODEL=/models/Qwen2.5-0.5B-Instruct bench/gpu_check.sh   # or a local model folder
#   GPU_CHECK_OUT=var/gpu-check bench/gpu_check.sh                      # also write results.json there
#
# Needs no network. Stops after GPU_CHECK_TIMEOUT seconds (470 by default, under 8 minutes), then runs
# bench/gpu_train.py --size 0.5b --qlora (GPU_TRAIN_TIMEOUT, 900 s by default).
# Without a CUDA device it says so and exits 0. Exit 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
  echo "gpu_check: no CUDA device is available here (torch.cuda.is_available() is false);"
  echo "run this script on a machine with an NVIDIA GPU and a CUDA build of torch. Nothing was checked."
  exit 0
fi
status=0
timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-470}" "$PY" bench/gpu_check.py "$@" || status=$?
# Then the engine against plain HF / Liger + flattening / Unsloth (issue 28), the quick 0.5B variant, LoRA and QLoRA:
timeout --signal=INT --kill-after=20 "${GPU_TRAIN_TIMEOUT:-900}" "$PY" bench/gpu_train.py --size 0.5b --qlora \
  ${GPU_CHECK_MODEL:+--model "$GPU_CHECK_MODEL"} ${GPU_CHECK_OUT:+--out "$GPU_CHECK_OUT/gpu_train.json"} || status=$?
exit "$status"
