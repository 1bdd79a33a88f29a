"""The dataset check page renders a real histogram and the highlighted example in Chromium."""

import json

import pytest

from tests.browser.pages import sign_in
from tests.conftest import memorisable_conversations

pytestmark = pytest.mark.browser


def test_check_page_histogram_and_highlighted_tokens(stack, page, tmp_path):
    data = tmp_path / "check.jsonl"
    rows = [{"messages": m} for m in memorisable_conversations(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/datasets/")
    page.set_input_files("#id_file", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#ds-rows") == "7"
    assert page.inner_text("#ds-duplicates").startswith("1")
    assert "line 7 repeats line 1" in page.inner_text("#ds-duplicates")

    # The tokens are counted once by the background worker; the page follows the count and shows it.
    page.wait_for_selector("#check-form", timeout=60_000)
    page.fill("input[name=max_length]", "24")
    page.click("#check-form button[type=submit]")
    page.wait_for_function("Chart.getChart('length-histogram') !== undefined")
    counts = page.evaluate("Chart.getChart('length-histogram').data.datasets[0].data")
    assert sum(counts) == 7
    assert page.get_attribute("#length-histogram", "data-max-line") is not None, "the max-length line is drawn"
    assert int(page.get_attribute("#truncation", "data-truncated")) == 7
    trained = page.locator(".sample .tok.trained").first
    assert '"answer"' in trained.inner_text()
    colour = page.evaluate("getComputedStyle(document.querySelector('.sample .tok.trained')).backgroundColor")
    masked = page.evaluate("getComputedStyle(document.querySelector('.sample .tok.masked')).color")
    assert colour != "rgba(0, 0, 0, 0)" and masked != colour

    # Delete asks first: dismissing the question keeps the dataset, accepting it deletes the dataset.
    here = page.url
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#delete-dataset")
    page.wait_for_timeout(500)
    assert page.url == here
    page.goto(here)  # a submitted delete would have made this a 404
    assert page.inner_text("#ds-rows") == "7"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-dataset")
    page.wait_for_url("**/datasets/")
    assert "Deleted" in page.inner_text("main")


def test_a_large_upload_page_follows_its_background_check_to_the_dataset(stack, page, tmp_path):
    """Over the stack's 64 KB inline size the page shows the check's progress and moves on by itself."""
    data = tmp_path / "large.jsonl"
    rows = [{"prompt": f"question {i} " + "word " * 30, "completion": f"answer {i}"} for i in range(500)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/datasets/")
    page.set_input_files("#id_file", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/checks/*/")
    assert page.locator("#upload-check").get_attribute("data-poll-url").endswith("/status/")
    page.wait_for_url("**/datasets/*-*-*-*-*/", timeout=60_000)  # the dataset's page, without a click
    assert "/checks/" not in page.url
    assert page.inner_text("#ds-rows") == "500"
    page.wait_for_selector("#check-form", timeout=60_000)  # then its token count, also followed
    assert int(page.get_attribute("#truncation", "data-truncated")) >= 0


def test_mapping_is_pre_filled_with_samples_and_duplicates_drop_in_one_click(stack, page, tmp_path):
    """Obvious headers are mapped already, with values beside the selects; the page then drops duplicates."""
    data = tmp_path / "support.csv"
    data.write_text(
        "Customer Question,Agent Answer,Ticket\nWhere is my parcel?,On its way.,T1\n"
        "Can I pay later?,Yes.,T2\nWhere is my parcel?,On its way.,T1\n"
    )
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/datasets/")
    page.set_input_files("#id_file", str(data))
    page.fill("#upload-form input[name=name]", "Support")
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#mapping-form")
    page.wait_for_load_state("load")  # the mapping script has run before a column is picked
    assert page.input_value("#mapping-form select[name=prompt]") == "Customer Question"
    assert page.input_value("#mapping-form select[name=response]") == "Agent Answer"
    assert page.input_value("#mapping-form select[name=system]") == ""
    assert "Where is my parcel?" in page.inner_text("#field-prompt .column-samples")
    page.select_option("#mapping-form select[name=system]", "Ticket")  # the script shows the picked column's values
    assert page.inner_text("#field-system .column-samples") == "e.g. “T1” · “T2” · “T1”"
    page.select_option("#mapping-form select[name=system]", "")
    page.click("#save-mapping")
    page.wait_for_url("**/datasets/*-*-*-*-*/")
    assert page.inner_text("#ds-rows") == "3"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#drop-duplicates")
    page.wait_for_selector("#ds-deduplicated-from")
    assert page.inner_text("h1") == "Support (deduplicated)" and page.inner_text("#ds-rows") == "2"
