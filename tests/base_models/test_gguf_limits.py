"""A GGUF upload is checked before anything is built from it: a header that declares more weights than the file
holds (a 515-billion parameter model in a few hundred bytes) or than the disk and memory allow is refused with
the figures, a truncated file is a plain message, and the conversion runs in a child process with a memory cap
and a bounded number of attempts, so the background worker outlives a bad file."""

import struct
import time
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.base_models import services
from jobs.base_models.models import BaseModel, ModelStatus
from tests.base_models.tiny_gguf import write_lying_gguf, write_tiny_gguf
from tests.factories import bearer_client
from worker import gguf_check
from worker.gguf_check import GgufError, GgufLayout, gguf_refusal, read_gguf_layout
from worker.gguf_convert import convert_gguf_limited

pytestmark = pytest.mark.django_db
GB = 1024**3


@pytest.fixture
def api_staff(django_user_model):
    return bearer_client(django_user_model.objects.create_user("root", is_staff=True))


def upload(api, path: Path) -> str:
    file = SimpleUploadedFile(path.name, path.read_bytes())
    response = api.post("/api/v1/base-models/", {"source": "gguf", "file": file}, format="multipart")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def test_a_gguf_declaring_515_billion_parameters_in_a_small_file_is_refused_before_anything_is_built(
    settings, api, tmp_path
):
    settings.USER_MODELS = True
    lying = write_lying_gguf(tmp_path / "huge.gguf")
    assert lying.stat().st_size < 1000 and read_gguf_layout(lying).parameters == 515_000_000_000
    model_id = upload(api, lying)
    started = time.monotonic()
    with mock.patch("worker.gguf_convert.start_child", side_effect=AssertionError("a child was started")):
        services.base_model_convert_gguf(model_id=model_id)
    assert time.monotonic() - started < 5
    model = BaseModel.objects.get(id=model_id)
    assert model.status == ModelStatus.FAILED
    size = lying.stat().st_size
    assert model.error == (
        f"the GGUF file declares 1918.52 GB of weights but holds only {size} bytes: it is damaged or not a real model"
    )
    shown = api.get(f"/api/v1/base-models/{model_id}/").json()
    assert shown["error"] == model.error and "Traceback" not in shown["error"]


@pytest.mark.parametrize("keep", [10, 12, 30, 200, 5000])
def test_a_truncated_gguf_is_a_plain_message(tiny_llama, tmp_path, keep):
    whole = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep])
    with pytest.raises(GgufError) as caught:
        read_gguf_layout(cut)
    assert caught.value.message == (
        f"This file is not a valid GGUF model: it ends after {keep:,} bytes, "
        "before the header is complete (a truncated upload?)"
    )
    assert caught.value.field == "file"


def test_a_header_the_reader_cannot_unpack_is_a_plain_message_never_the_library_text(tmp_path, monkeypatch):
    """Whatever fails while reading the header (here the struct error a short buffer gives) reaches the user as
    the product's sentence, not as "unpack_from requires a buffer of at least 24 bytes"."""
    path = tmp_path / "odd.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\0" * 40)

    def short_buffer(self, fmt):
        raise struct.error("unpack_from requires a buffer of at least 24 bytes")

    monkeypatch.setattr(gguf_check._Reader, "scalar", short_buffer)
    with pytest.raises(GgufError) as caught:
        read_gguf_layout(path)
    assert caught.value.message == (
        "This file is not a valid GGUF model: its header cannot be read (it is damaged or not a GGUF file)"
    )
    assert "unpack_from" not in caught.value.message and caught.value.field == "file"


def test_the_header_is_read_as_the_gguf_package_reads_it(tmp_path):
    """llama.cpp's own reader (gguf.GGUFReader) and read_gguf_layout agree on a file written by gguf.GGUFWriter:
    the same tensors in the same order with the same names and dimensions, elements and end of the data."""
    import gguf
    import numpy as np

    path = tmp_path / "written.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "written by GGUFWriter")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((7, 4), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((4, 4), dtype=np.float16))
    writer.add_tensor("blk.0.ffn_up.weight", np.ones((3, 2, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((4,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(str(path))
    layout = read_gguf_layout(path)
    assert layout.tensors == len(reader.tensors) == 4
    assert list(layout.shapes) == [(t.name, tuple(int(d) for d in t.shape)) for t in reader.tensors]
    assert layout.parameters == sum(int(t.n_elements) for t in reader.tensors) == 28 + 16 + 24 + 4
    assert layout.data_end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert layout.file_bytes == path.stat().st_size
    assert gguf_refusal(layout, free_disk=GB, memory=GB, max_parameters=0) is None


def test_a_gguf_cut_after_its_header_declares_more_than_it_holds(tiny_llama, tmp_path):
    whole = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 1000])
    layout = read_gguf_layout(cut)
    assert layout.data_end == len(whole)  # the tiny model's header is read as llama.cpp lays it out
    assert "declares" in gguf_refusal(layout, free_disk=100 * GB, memory=100 * GB, max_parameters=0)


def test_what_does_not_fit_the_disk_the_memory_or_the_limit_is_refused_with_the_figures():
    layout = GgufLayout(file_bytes=8 * GB, tensors=300, parameters=7_000_000_000, data_end=8 * GB)
    assert gguf_refusal(layout, free_disk=100 * GB, memory=100 * GB, max_parameters=0) is None
    assert gguf_refusal(layout, free_disk=10 * GB, memory=100 * GB, max_parameters=0) == (
        "converted to float32 the model needs 26.08 GB of disk and only 10.00 GB are free"
    )
    assert gguf_refusal(layout, free_disk=100 * GB, memory=32 * GB, max_parameters=0).startswith(
        "converting the model needs about 52.15 GB of memory and only 32.00 GB can be used"
    )
    assert "limit here is 5.00 billion (GGUF_MAX_PARAMETERS)" in gguf_refusal(
        layout, free_disk=100 * GB, memory=100 * GB, max_parameters=5_000_000_000
    )


def test_the_conversion_child_runs_out_of_its_memory_cap_and_says_so(tiny_llama, tmp_path):
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    with pytest.raises(GgufError) as caught:
        convert_gguf_limited(gguf, tmp_path / "out" / "model", memory_mb=150, seconds=120)
    assert caught.value.message == (
        "converting the model needs more than the 150 MB of memory it may use (GGUF_CONVERT_MEMORY_MB)"
    )
    assert not (tmp_path / "out" / "model").exists()


def test_conversion_attempts_are_counted_and_a_conversion_whose_worker_kept_dying_fails_for_good(
    settings, api, tiny_llama, tmp_path
):
    settings.USER_MODELS, settings.GGUF_CONVERT_ATTEMPTS = True, 2
    model_id = upload(api, write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf"))
    # Two deliveries whose worker died mid-conversion (the row stays "converting", as a killed worker leaves it).
    with mock.patch("jobs.base_models.services.convert_gguf_limited", side_effect=SystemExit):
        for _ in range(2):
            with pytest.raises(SystemExit):
                services.base_model_convert_gguf(model_id=model_id)
    model = BaseModel.objects.get(id=model_id)
    assert (model.status, model.attempts) == (ModelStatus.CONVERTING, 2)
    with mock.patch("jobs.base_models.services.convert_gguf_limited") as convert:
        services.base_model_convert_gguf(model_id=model_id)  # the third delivery
    convert.assert_not_called()
    model.refresh_from_db()
    assert (model.status, model.attempts) == (ModelStatus.FAILED, 3)
    assert model.error == (
        "the conversion was started 2 times and never finished (its worker stopped); "
        "it is not tried again (GGUF_CONVERT_ATTEMPTS)"
    )


SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"


def test_a_folder_whose_chat_template_loops_for_ever_is_refused_with_the_reason(api_staff, tiny_llama, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_llama, tmp_path / "slow-template")
    (folder / "chat_template.jinja").write_text(SLOW_TEMPLATE)
    response = api_staff.post(
        "/api/v1/base-models/", {"source": "folder", "name": "s", "path": str(folder)}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "path" and error["message"].startswith("the model's chat template is refused: ")
    assert "more than 1,000,000 loop steps" in error["message"]
    assert not BaseModel.objects.exists()


def test_a_gguf_whose_chat_template_loops_for_ever_is_converted_then_refused_with_the_reason(
    settings, api, tiny_llama, tmp_path
):
    import shutil

    settings.USER_MODELS = True
    folder = shutil.copytree(tiny_llama, tmp_path / "slow-template")
    (folder / "chat_template.jinja").write_text(SLOW_TEMPLATE)
    model_id = upload(api, write_tiny_gguf(folder, tmp_path / "slow.gguf"))
    services.base_model_convert_gguf(model_id=model_id)
    model = BaseModel.objects.get(id=model_id)
    assert model.status == ModelStatus.FAILED
    assert model.error.startswith("the model's chat template is refused: the chat template runs more than 1,000,000")
