"""A new user's first hour, in Chromium: the job form shows every error at once, beside its field, in plain words,
with the folded section that holds one opened; fields that do not apply stay out of the way."""
import json

import pytest
import requests

from tests.browser.pages import sign_in
from tests.conftest import memorisable_conversations

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def api(stack):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.api_key('alice')}"
    return session


@pytest.fixture(scope="module")
def dataset(stack, api):
    data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations())
    return api.post(stack.url + "/api/v1/datasets/", files={"file": ("colours.jsonl", data.encode())}).json()["id"]


def visible(page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def test_the_job_form_shows_every_error_at_once_beside_its_field(stack, page, dataset):
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={dataset}")
    # Fields that do not apply to the current choices are hidden until they do.
    assert not visible(page, "#field-target_modules") and not visible(page, "#field-validation_dataset")
    assert not visible(page, "#field-beta") and visible(page, "#field-validation_percent")
    page.select_option("#id_target_preset", "custom")
    assert visible(page, "#field-target_modules")
    page.select_option("#id_target_preset", "attention")
    page.select_option("#id_validation", "dataset")
    assert visible(page, "#field-validation_dataset") and not visible(page, "#field-validation_percent")
    page.select_option("#id_validation", "split")
    page.select_option("#id_method", "dpo")
    assert visible(page, "#field-beta")
    page.select_option("#id_method", "supervised")

    # Three mistakes, two of them folded under Advanced.
    page.fill("#id_rank", "0")
    page.click("#advanced summary")
    page.fill("#id_grad_accum", "0")
    page.fill("#id_warmup_ratio", "0.9")
    page.click("#advanced summary")
    assert page.locator("#advanced").get_attribute("open") is None
    page.click("#submit-job")
    page.wait_for_load_state()
    assert page.locator("#advanced").get_attribute("open") is not None, "the section holding an error opens"
    assert "Must be between 1 and 1024 (you gave 0)" in page.inner_text("#field-rank")
    assert "Must be between 1 and 1024 (you gave 0)" in page.inner_text("#field-grad_accum")
    assert "Must be between 0 and 0.5 (you gave 0.9)" in page.inner_text("#field-warmup_ratio")
    assert visible(page, "#field-grad_accum .field-error") and visible(page, "#field-warmup_ratio .field-error")
    summary = page.inner_text("#form-errors")
    assert "3 things to fix" in summary and "Gradient accumulation" in summary and "[" not in summary
    assert page.evaluate("document.activeElement.id") == "id_rank", "the first wrong field has the focus"
    assert page.get_attribute("#id_grad_accum", "aria-invalid") == "true"
    assert page.get_attribute("#id_grad_accum", "aria-describedby") == "id_grad_accum-error"
    # Mended, the same form starts the job.
    page.fill("#id_rank", "8")
    page.fill("#id_grad_accum", "1")
    page.fill("#id_warmup_ratio", "0.1")
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*/")
