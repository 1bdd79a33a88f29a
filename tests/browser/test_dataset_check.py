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


def test_a_prompts_check_page_charts_prompts_against_the_answers_room_and_leads_to_a_job(stack, page, tmp_path):
    data = tmp_path / "prompts.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}? " * (1 + i)}], "answer": 2 * i} for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/datasets/")
    page.set_input_files("#id_file", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    page.wait_for_selector("#check-form", timeout=60_000)
    page.fill("input[name=max_length]", "48")
    page.fill("input[name=answer_tokens]", "24")
    page.click("#check-form button[type=submit]")
    page.wait_for_function("Chart.getChart('length-histogram') !== undefined")
    chart = page.evaluate(
        "(() => { const c = Chart.getChart('length-histogram'); return {label: c.data.datasets[0].label, "
        "title: c.options.plugins.title.text, n: c.data.datasets[0].data.reduce((a, b) => a + b, 0)}; })()"
    )
    assert chart["label"] == "prompts" and chart["n"] == 6
    assert "beyond the room the answers leave 24" in chart["title"]
    assert page.get_attribute("#length-histogram", "data-max-line") is not None
    assert page.locator("#prompt-fields th[scope=col]").all_inner_texts() == ["answer"]
    assert page.locator("#prompt-fields tbody tr").count() == 6
    assert page.locator("pre.sample.prompt").first.inner_text().startswith("<|im_start|>user")
    page.click("#ds-kind-start")
    page.wait_for_url("**/jobs/new/?dataset=*")
    assert page.locator("select[name=method]").input_value() == "reinforcement"


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
    assert not page.is_visible("#mapping-form select[name=system]")  # an optional role waits behind "more"
    page.click("#more-roles > summary")
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


def test_two_columns_show_two_selects_and_five_examples_are_kept_with_a_too_few_warning(stack, page, tmp_path):
    """A 2-column CSV asks only for its prompt and answer columns (the text choice one click away, nothing a third
    column would need); its 5 examples are stored, and the check page warns that they are too few."""
    data = tmp_path / "two.csv"
    data.write_text("Question,Reply\n" + "".join(f"Colour of item {i}?,Red {i}.\n" for i in range(5)))
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/datasets/")
    # One line of help; the formats one click away.
    assert page.is_visible("#upload-help") and not page.is_visible("#upload-formats dl")
    page.click("#upload-formats > summary")
    assert "Chat examples (messages)" in page.inner_text("#upload-formats")
    page.set_input_files("#id_file", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#mapping-form")
    visible = [s for s in page.locator("#mapping-form select").all() if s.is_visible()]
    assert [s.get_attribute("name") for s in visible] == ["prompt", "response"]
    assert page.locator("#mapping-form select").count() == 3  # and text, behind "more"
    assert page.input_value("#mapping-form select[name=prompt]") == "Question"
    assert page.input_value("#mapping-form select[name=response]") == "Reply"
    page.click("#save-mapping")
    page.wait_for_url("**/datasets/*-*-*-*-*/")
    assert page.inner_text("#ds-rows") == "5"
    warning = page.locator("#ds-size-warning")
    assert warning.is_visible()
    assert "Too few to train well." in warning.inner_text() and "Only 5 examples" in warning.inner_text()


def test_the_models_page_tells_a_normal_user_what_models_are_and_whom_to_ask(stack, page):
    """Without USER_MODELS a user adds no model: the page says what base models are and that staff add them,
    with no form to fill in vain."""
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/models/")
    intro = page.inner_text("#models-intro")
    assert "A base model is the pretrained language model a fine-tuning job starts from" in intro
    assert "Only staff add models on this server" in intro and "ask your administrator" in intro
    assert page.locator("main form input[name=source]").count() == 0
    assert page.locator("#models-table tbody tr").count() >= 1  # the stack's shared tiny model, usable by bob
