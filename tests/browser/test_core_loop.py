"""Log in, upload, submit, watch the chart receive points, download the zip, compare — in Chromium."""

import json
import zipfile

import pytest

from tests.browser.pages import open_custom, sign_in
from tests.conftest import memorisable_conversations

pytestmark = pytest.mark.browser


def test_core_loop_in_the_browser(stack, page, tmp_path):
    data = tmp_path / "colours.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations()))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}\n')

    sign_in(page, stack, "alice")

    page.goto(stack.url + "/datasets/")
    page.set_input_files("#id_file", str(bad))
    page.click("#upload-form button[type=submit]")
    assert "line 1: messages[1].content is empty" in page.inner_text("#upload-problems")
    page.set_input_files("#id_file", str(data))
    page.click("#upload-form button[type=submit]")
    page.get_by_text("Uploaded colours.jsonl: 8 examples").wait_for()
    page.click("text=Train on this")
    page.wait_for_url("**/jobs/new/**")  # waits for "load": the form's scripts have run before a preset is chosen

    # Goals fill the form; touching one of their settings afterwards makes it a custom configuration.
    assert page.is_checked("#goal-balanced")
    page.check("#goal-quality")
    assert page.input_value("#id_target_preset") == "all_linear" and page.input_value("#id_epochs") == "3"
    page.check("#goal-quick")
    assert page.input_value("#id_rank") == "8" and page.input_value("#id_learning_rate") == "0.002"
    open_custom(page)
    page.fill("#id_name", "browser run")
    assert page.is_checked("#goal-quick"), "the name is not part of a goal"
    page.select_option("#id_target_preset", "all_linear")
    assert page.is_checked("#goal-custom") and not page.is_checked("#goal-quick")
    page.fill("#id_epochs", "20")
    page.fill("#id_learning_rate", "0.01")
    page.fill("#id_batch_size", "4")
    page.fill("#id_rank", "0")
    page.click("#submit-job")
    assert "Must be between 1 and 1024 (you gave 0)" in page.inner_text("#field-rank")
    page.fill("#id_rank", "8")
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*/")

    # The chart grows from server-sent events, without a reload.
    page.wait_for_function("Number(document.getElementById('points-count').dataset.count) >= 5", timeout=120_000)
    page.wait_for_function("document.getElementById('job-status').textContent === 'succeeded'", timeout=120_000)
    points = page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.length")
    assert points == 40
    with page.expect_download() as dl:
        page.click("#download-zip")
    path = tmp_path / "adapter.zip"
    dl.value.save_as(path)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(zipfile.ZipFile(path).namelist())

    # A reload shows the whole stored curve again.
    page.reload()
    page.wait_for_function("Chart.getChart('loss-chart').data.datasets[0].data.length === 40", timeout=30_000)
    # The best checkpoint (lowest eval loss) is marked on the chart and named in the stats.
    best = page.evaluate("Chart.getChart('loss-chart').data.datasets[2].data")
    evals = page.evaluate("Chart.getChart('loss-chart').data.datasets[1].data")
    assert len(best) == 1 and best[0]["y"] == min(p["y"] for p in evals)
    assert page.text_content("#stat-best").endswith(f"at step {best[0]['x']}")
    assert page.text_content("#stat-mem").endswith("MB")

    page.click("#compare-link")
    page.fill("#prompt", "colour 2")
    page.click("#ask")
    page.wait_for_function(
        "document.querySelectorAll('.answer.pending').length === 0 && "
        "document.querySelectorAll('.answer').length === 2",
        timeout=120_000,
    )
    assert '"blue"' in page.inner_text("#side-adapter .answer")
    assert page.inner_text("#side-base .answer") != page.inner_text("#side-adapter .answer")
    page.screenshot(path=str(stack.tmp / "compare.png"), full_page=True)
