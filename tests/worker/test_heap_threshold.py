"""The heap setting QLoRA's memory saving on the CPU relies on (the saving itself is measured by
bench/qlora_memory.py against 16-bit LoRA runs in the same invocation: see bench/README.md)."""

import sys

from worker.modeling import keep_large_buffers_off_the_heap


def test_the_heap_threshold_is_pinned_on_linux():
    assert keep_large_buffers_off_the_heap() is sys.platform.startswith("linux")
