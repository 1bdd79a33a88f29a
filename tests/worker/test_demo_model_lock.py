"""Two processes preparing the demo model at once (`make run` beside a test run, two test workers) convert it
once: the second waits on the folder's lock, then finds the model complete."""

import threading
import time

from worker import demo_model


def test_two_conversions_at_once_convert_once(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "models" / "demo"
    calls = []

    def slow_convert(gguf_path, out_dir):
        calls.append(out_dir)
        time.sleep(0.5)  # the other caller arrives while this one converts
        out_dir.mkdir(parents=True)
        for name in demo_model._MODEL_FILES + demo_model._TOKENIZER_FILES:
            (out_dir / name).write_text("x")
        return out_dir

    monkeypatch.setattr(demo_model, "_convert", slow_convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(demo_model.convert_gguf_to_hf(gguf, out))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [out.resolve(), out.resolve()]
    assert len(calls) == 1, calls
    assert demo_model.is_complete_model_dir(out)
