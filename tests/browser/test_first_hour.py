"""A new user's first hour, in Chromium: the job form shows every error at once, beside its field, in plain words,
with the folded section that holds one opened; fields that do not apply stay out of the way."""

import json
import re

import pytest
import requests

from tests.browser.pages import open_custom, sign_in
from tests.conftest import memorisable_conversations
from tests.waiting import page_sleep, wait_until

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
    open_custom(page)
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

    # Three mistakes, all folded under Custom settings once it is closed again.
    page.fill("#id_rank", "0")
    page.fill("#id_grad_accum", "0")
    page.fill("#id_warmup_ratio", "0.9")
    page.click("#custom summary")
    assert page.locator("#custom").get_attribute("open") is None
    page.click("#submit-job")
    page.wait_for_load_state()
    assert page.locator("#custom").get_attribute("open") is not None, "the section holding an error opens"
    assert "Must be between 1 and 1024 (you gave 0)" in page.inner_text("#field-rank")
    assert "Must be between 1 and 1024 (you gave 0)" in page.inner_text("#field-grad_accum")
    assert "Must be between 0 and 0.5 (you gave 0.9)" in page.inner_text("#field-warmup_ratio")
    assert visible(page, "#field-grad_accum .field-error") and visible(page, "#field-warmup_ratio .field-error")
    summary = page.inner_text("#form-errors")
    assert "3 things to fix" in summary and "Gradient accumulation" in summary and "[" not in summary
    # How much to train (warmup) comes before the adapter's size (rank) in Custom settings.
    assert page.evaluate("document.activeElement.id") == "id_warmup_ratio", "the first wrong field has the focus"
    assert page.get_attribute("#id_grad_accum", "aria-invalid") == "true"
    assert page.get_attribute("#id_grad_accum", "aria-describedby") == "id_grad_accum-error"
    # Mended, the same form starts the job.
    page.fill("#id_rank", "8")
    page.fill("#id_grad_accum", "1")
    page.fill("#id_warmup_ratio", "0.1")
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*/")


VISIBLE_CONTROLS = """() => [...document.querySelectorAll('#job-form input, #job-form select, #job-form textarea')]
    .filter((c) => c.type !== 'hidden' && c.checkVisibility()).map((c) => c.name)"""


def test_a_fresh_job_form_asks_for_data_a_model_and_a_goal_and_folds_the_rest(stack, page, dataset):
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={dataset}")
    shown = page.evaluate(VISIBLE_CONTROLS)
    assert len(shown) <= 8 and {"dataset", "base_model", "preset"} <= set(shown), shown
    goals = page.inner_text("#field-preset")
    assert all(t in goals for t in ("Quick try", "Balanced", "Best quality", "rougher answers")), goals
    # The estimate comes by itself, and says what the second figure is.
    page.wait_for_function("document.getElementById('estimate').textContent.includes('Memory: about')")
    memory = page.inner_text("#estimate")
    figure = r"[\d.,]+ (GB|MB)"
    assert re.search(f"Memory: about {figure} of the {figure} (this machine has|set aside|.*train worker has)", memory)
    open_custom(page)
    more = page.evaluate(VISIBLE_CONTROLS)
    assert len(more) >= 30 and {"rank", "alpha", "dropout", "qlora", "validation_seed", "method"} <= set(more)
    assert page.inner_text("label[for=id_rank]").split() == ["Adapter", "size", "Rank"]
    assert page.inner_text("label[for=id_qlora]").startswith("Save memory: 4-bit base")
    assert page.inner_text("label[for=id_validation_seed]").startswith("Hold-back shuffle number")


def test_the_estimate_follows_a_change_of_method_without_a_click(stack, page, dataset):
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={dataset}")
    ready = """(old) => { const t = document.getElementById('estimate').textContent;
                          return t !== old && !t.includes('Estimating') && t.length > 0; }"""
    page.wait_for_function(ready, arg="")
    assert "Memory: about" in page.inner_text("#estimate")
    open_custom(page)
    old = page.text_content("#estimate")
    page.select_option("#id_method", "dpo")  # this dataset holds plain examples: DPO cannot train on it
    page.wait_for_function(ready, arg=old)
    text = page.inner_text("#estimate")
    assert "preference pairs" in text and "Memory: about" not in text, text
    old = page.text_content("#estimate")
    page.select_option("#id_method", "supervised")
    page.wait_for_function(ready, arg=old)
    text = page.inner_text("#estimate")
    assert "Memory: about" in text and "preference pairs" not in text, text


def test_prompts_get_a_reward_builder_that_checks_and_tries_the_grader_on_a_few_rows(stack, page, api, dataset):
    """Prompts to reward pick reinforcement, and "How answers are scored" shows without opening Custom settings: a
    starting point in words and a field of the data fill the grader's JSON, Check says it is fine (or names the
    JSON path that is wrong), and Try shows the start model's answers to the first prompts with their scores."""
    lines = [{"messages": [{"role": "user", "content": f"colour {i}"}], "answer": "red"} for i in range(4)]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    prompts = api.post(stack.url + "/api/v1/datasets/", files={"file": ("prompts.jsonl", body)}).json()["id"]
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={prompts}")
    assert page.input_value("#id_method") == "reinforcement"
    assert visible(page, "#reward-builder") and not visible(page, "#id_grader")  # Custom settings stay folded
    page.select_option("#rb-start", label="The answer equals a field of my data")
    page.select_option("#rb-field", "answer")
    assert json.loads(page.input_value("#id_grader")) == {
        "type": "string_check",
        "name": "equals_answer",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
    }
    page.click("#rb-check")
    page.locator("#rb-result.rb-ok").wait_for(timeout=60_000)
    assert "The grader is fine" in page.inner_text("#rb-result")
    page.click("#rb-edit")  # the JSON, one click away
    assert visible(page, "#id_grader") and page.evaluate("document.activeElement.id") == "id_grader"
    page.fill("#id_max_answer_tokens", "6")  # short answers keep the try cheap
    page.click("#rb-try")
    rows = page.locator("#rb-rows tbody tr")
    rows.nth(2).wait_for(timeout=240_000)
    assert rows.count() == 3 and "mean score" in page.inner_text("#rb-result"), page.inner_text("#rb-result")
    for i in range(3):
        cells = [rows.nth(i).locator("td").nth(c) for c in range(4)]
        assert cells[0].text_content() == f"colour {i}"
        score = "1.00" if cells[1].text_content() == "red" else "0.00"
        assert cells[2].text_content() == score and cells[3].text_content() == f"equals_answer: {score}"
    wrong = json.loads(page.input_value("#id_grader")) | {"operation": "equals"}
    page.fill("#id_grader", json.dumps(wrong))
    page.click("#rb-check")
    page.locator("#rb-result.rb-error").wait_for(timeout=60_000)
    assert page.inner_text("#rb-result").startswith("grader.operation: must be one of eq, ne, like, ilike")
    page.select_option("#id_dataset", dataset)  # examples with answers: supervised, and the builder goes away
    assert page.input_value("#id_method") == "supervised" and not visible(page, "#reward-builder")


def start_job(stack, api, dataset, **config) -> str:
    base = next(m["id"] for m in api.get(stack.url + "/api/v1/base-models/").json() if m["name"] == "tiny-llama")
    response = api.post(
        stack.url + "/api/v1/jobs/",
        json={
            "dataset": dataset,
            "base_model": base,
            "validation": "split",
            "validation_percent": 25,
            "config": {"rank": 8, "max_seq_length": 128, "batch_size": 2, **config},
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def mark_page(page) -> None:
    """A mark that a reload would wipe out."""
    page.evaluate("window.notReloaded = true")


def still_marked(page) -> bool:
    return page.evaluate("window.notReloaded === true")


def test_the_job_page_fills_in_the_end_of_the_job_and_the_merged_export_without_a_reload(stack, page, api, dataset):
    job = start_job(stack, api, dataset, max_steps=8)
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{job}/")
    mark_page(page)
    assert page.locator("#evaluation").count() == 0 and not page.locator("#download-zip").is_visible()
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=120_000)
    page.locator("#evaluation").wait_for(timeout=10_000)
    assert "Evaluation: base vs adapted" in page.inner_text("#evaluation")
    assert page.inner_text("#summary-sentence").startswith("The adapted model answers exactly as your data does")
    assert page.locator("#download-zip").is_visible() and page.locator("#merge-job").is_visible()
    assert still_marked(page)
    page.click("#merge-job")  # a form post: the page comes back with the export pending
    page.locator("#merge-pending").wait_for()
    mark_page(page)
    page.locator("#download-merged").wait_for(timeout=60_000)
    assert still_marked(page) and page.locator("#merge-pending").count() == 0
    # The Export card: a GGUF LoRA export is followed live until its download and Ollama commands show.
    assert "vllm serve" in page.inner_text("#recipe-vllm") + page.text_content("#recipe-vllm")
    page.click("#export-gguf-lora")  # a form post: the page comes back with the export pending
    page.locator("#export-list [data-export-id]").wait_for()
    mark_page(page)
    page.locator("#export-list a.export-download").wait_for(timeout=60_000)
    assert still_marked(page)
    assert "ollama create" in page.text_content("#export-list code")
    with page.expect_download() as download:
        page.click("#export-list a.export-download")
    assert download.value.suggested_filename.endswith("-gguf-lora.zip")
    # Publish to Hugging Face: the token is a password field used once; a refusal shows beside the form, in words,
    # with its field focused (nothing is sent to the Hub: the answer comes before any upload is queued).
    assert page.get_attribute("#publish-token", "type") == "password" and page.is_checked("#publish-private")
    page.fill("#publish-repo", "alice/colours")
    page.click("#publish-submit")
    page.locator("#publish-error", has_text="token").wait_for()
    assert page.evaluate("document.activeElement.id") == "publish-token"
    page.fill("#publish-repo", "no-namespace")
    page.fill("#publish-token", "hf_example")
    page.click("#publish-submit")
    page.locator("#publish-error", has_text="your-name/my-adapter").wait_for()
    assert page.evaluate("document.activeElement.id") == "publish-repo" and still_marked(page)


def test_find_settings_runs_a_sweep_with_a_live_leaderboard_and_promotes_the_best(stack, page, dataset):
    """Beside the job form, "Find settings": an error shows beside its field; the sweep's page follows its trials
    live (leaderboard, chart with its table) and Promote makes the best trial's ft: id the result."""
    sign_in(page, stack, "alice")
    page.goto(stack.url + "/jobs/new/")
    page.click("#find-settings")
    page.wait_for_url("**/sweeps/new/")
    page.select_option("#id_dataset", dataset)
    page.fill("#id_ranks", "0, 4, 8")
    page.fill("#id_trials", "1")  # one trial keeps the test short; tests/sweeps and test_faults run several
    page.fill("#id_parallelism", "1")
    page.fill("#id_epochs_low", "1")
    page.fill("#id_epochs_high", "2")
    page.click("#start-sweep")
    assert "between 1 and 1024" in page.inner_text("#field-ranks")
    page.fill("#id_ranks", "2, 4, 8")
    page.click("#start-sweep")
    page.wait_for_url(re.compile(r".*/sweeps/[0-9a-f-]+/$"))
    page.locator("#leaderboard tbody tr").first.wait_for()
    page.locator("#sweep-status", has_text="succeeded").wait_for(timeout=180_000)
    page.locator("#promote-sweep").wait_for()
    assert page.locator("#leaderboard tbody tr").count() == 1
    page.wait_for_function("Chart.getChart('sweep-chart').data.datasets.length >= 1")
    assert page.locator("#sweep-chart-table tbody tr").count() >= 1
    page.click("#promote-sweep")
    page.locator("#result-model", has_text="ft:tiny-llama:").wait_for()


def test_a_finished_job_opens_with_its_result_in_plain_words(stack, page, api, dataset):
    job = start_job(stack, api, dataset, max_steps=2)
    sign_in(page, stack, "alice")
    wait_status(stack, api, job, ("succeeded",), page)
    page.set_viewport_size({"width": 1300, "height": 800})
    page.goto(f"{stack.url}/jobs/{job}/")
    sentence = page.locator("#summary-sentence")
    assert re.match(
        r"The adapted model answers exactly as your data does \d+ % of the time; the base model \d+ %",
        sentence.inner_text(),
    )
    rows = page.locator("#headline-numbers tbody tr")
    assert rows.count() >= 1 and "exact match" in rows.first.inner_text()
    for part in [sentence, *rows.all()]:  # in the first screenful, without scrolling
        box = part.bounding_box()
        assert part.is_visible() and box is not None and box["y"] + box["height"] <= 800
    assert not page.locator("#stat-mfu").is_visible() and not page.locator("th[title=rank]").is_visible(), "folded"
    page.click("#all-settings summary")
    assert page.locator("th[title=rank]").is_visible()
    assert page.get_by_text("Beta (DPO)").count() == 0, "no DPO setting on a supervised job"


def test_a_paused_job_can_be_cancelled_after_a_confirmation(stack, page, api, dataset):
    job = start_job(stack, api, dataset, max_steps=400)
    assert api.post(f"{stack.url}/api/v1/jobs/{job}/pause/").status_code in (200, 202)
    wait_status(stack, api, job, ("paused",), page, timeout_s=60, interval=0.1)
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{job}/")
    page.wait_for_timeout(1500)  # the live stream has replayed the paused status by now
    assert page.locator("#cancel-job").is_visible() and page.locator("#resume-job").is_visible()
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.click("#cancel-job")
    page.wait_for_timeout(500)
    assert questions and questions[0].startswith("Cancel this job?")
    assert api.get(f"{stack.url}/api/v1/jobs/{job}/").json()["status"] == "paused", "dismissed: nothing happens"
    page.once("dialog", lambda d: answer(d, True))
    page.click("#cancel-job")
    page.locator("#job-status", has_text="cancelled").wait_for(timeout=10_000)
    assert api.get(f"{stack.url}/api/v1/jobs/{job}/").json()["status"] == "cancelled"


def wait_status(stack, api, job, wanted, page, timeout_s=120, interval=0.2):
    """Wait (the page handling its events meanwhile) until the job's status is one of `wanted`; that status."""
    return wait_until(
        lambda: api.get(f"{stack.url}/api/v1/jobs/{job}/").json()["status"],
        until=lambda status: status in wanted,
        timeout=timeout_s,
        interval=interval,
        what=f"job {job} to be {' or '.join(wanted)}",
        on_timeout=stack.logs,
        sleep=page_sleep(page),
    )


def test_new_job_from_this_fills_every_field_and_delete_asks_first(stack, page, api, dataset):
    from jobs.training.forms import CONFIG_FIELDS

    job = start_job(
        stack,
        api,
        dataset,
        max_steps=2,
        alpha=8,
        dropout=0.1,
        target_preset="custom",
        target_modules=["q_proj", "v_proj"],
        learning_rate=0.002,
        grad_accum=2,
        warmup_ratio=0.1,
        lr_scheduler="cosine",
        seed=7,
        bias="lora_only",
        use_rslora=True,
        max_grad_norm=0.5,
        eval_every=3,
        save_every=5,
        keep_best=False,
    )
    detail = api.get(f"{stack.url}/api/v1/jobs/{job}/").json()
    assert detail["name"].startswith("colours · custom · "), "a readable default name"
    wait_status(stack, api, job, ("succeeded",), page)
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{job}/")
    assert page.inner_text("h1") == detail["name"]
    page.click("#clone-job")
    page.wait_for_url("**/jobs/new/?from=*")
    config = detail["config"]
    for name in CONFIG_FIELDS:
        control = page.locator(f"#id_{name}")
        if control.get_attribute("type") == "checkbox":
            assert control.is_checked() == config[name], name
        elif isinstance(config[name], list):
            assert control.input_value() == ", ".join(config[name]), name
        elif isinstance(config[name], (int, float)) and not isinstance(config[name], bool):
            assert float(control.input_value()) == config[name], name
        else:
            assert control.input_value() == str(config[name]), name
    assert page.input_value("#id_name") == detail["name"] + " (copy)"
    assert page.input_value("#id_validation") == "split" and page.input_value("#id_validation_percent") == "25.0"
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*/")
    copy = page.url.rstrip("/").rsplit("/", 1)[1]
    assert copy != job and api.get(f"{stack.url}/api/v1/jobs/{copy}/").json()["config"] == config

    # Deleting asks first; dismissed, nothing happens.
    page.goto(f"{stack.url}/jobs/{job}/")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#delete-job")
    page.wait_for_timeout(300)
    assert api.get(f"{stack.url}/api/v1/jobs/{job}/").status_code == 200
    page.once("dialog", lambda d: d.accept())
    page.click("#delete-job")
    page.wait_for_url("**/jobs/")
    assert "Deleted the job" in page.inner_text("main")
    assert api.get(f"{stack.url}/api/v1/jobs/{job}/").status_code == 404
    api.post(f"{stack.url}/api/v1/jobs/{copy}/cancel/")


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def duplicate_ids(page) -> list[str]:
    return page.evaluate("""() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
        return [...new Set(ids.filter((id, i) => ids.indexOf(id) !== i))]; }""")


def contrast(page, selector: str) -> float:
    """WCAG contrast ratio of the element's text against the first opaque background behind it."""
    return page.evaluate(
        """(selector) => {
        const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
        const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                     return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        const el = document.querySelector(selector);
        let bg = el, back = [255, 255, 255];
        while (bg) { const c = rgb(getComputedStyle(bg).backgroundColor); if (c.length < 4 || c[3] > 0) { back = c.slice(0, 3); break; } bg = bg.parentElement; }
        const [a, b] = [lum(rgb(getComputedStyle(el).color).slice(0, 3)), lum(back)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05); }""",
        selector,
    )


def too_wide(page) -> list[str]:
    """The outermost elements that reach past the window's right edge (for the failure message)."""
    return page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                     && !(e.parentElement && e.parentElement.getBoundingClientRect().right > window.innerWidth + 1))
        .slice(0, 5).map(e => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`)""")


def cut_off(page) -> list[str]:
    """Visible elements that reach past the window's right edge, inside a sideways-scrolling box or not (a table
    that scrolls inside its card hides its right-hand columns just the same)."""
    return page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => { const r = e.getBoundingClientRect();
                       return r.width > 0 && r.height > 0 && r.right > window.innerWidth + 1 && e.checkVisibility(); })
        .slice(0, 5).map(e => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`)""")


def broken_code_words(page) -> list[str]:
    """Short code words (no spaces) that the page breaks over two lines ('tex' / 't')."""
    return page.evaluate("""() => [...document.querySelectorAll('main code')]
        .filter(c => c.checkVisibility() && !/\\s/.test(c.textContent) && c.textContent.length <= 24
                     && c.getClientRects().length > 1).map(c => c.textContent)""")


def test_every_page_fits_a_phone_and_says_where_to_go(stack, browser, api, dataset):
    first = start_job(stack, api, dataset, max_steps=2)
    second = start_job(stack, api, dataset, max_steps=2, rank=4, alpha=8)
    for job in (first, second):
        detail = wait_until(
            lambda: api.get(f"{stack.url}/api/v1/jobs/{job}/").json(),  # noqa: B023 (called at once)
            until=lambda d: d["status"] in ("succeeded", "failed"),
            timeout=120,
            interval=0.2,
            what=f"job {job} to end",
            on_timeout=stack.logs,
        )
        assert detail["status"] == "succeeded", detail
    context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
    page = context.new_page()
    # Signed out: what the product is, a way to an account and back, a styled 404 with a way back, a favicon.
    page.goto(stack.url + "/accounts/login/")
    assert "Fine-tune a language model on your own data" in page.inner_text("main") and no_sideways_scroll(page)
    page.click("main >> text=Create one")
    page.click("main >> text=Sign in")
    page.wait_for_url("**/accounts/login/")
    assert page.request.get(stack.url + "/favicon.ico").headers["content-type"].startswith("image/svg")
    response = page.goto(stack.url + "/no/such/page/")
    assert response.status == 404 and "Page not found" in page.inner_text("h1")
    sign_in(page, stack, "alice")
    # The top bar is one line with a Menu button; a tap shows the links, another folds them away.
    menu, links = page.locator("header.top .menu-toggle"), page.locator("header.top nav a")
    assert menu.is_visible() and not links.first.is_visible()
    assert page.locator("header.top").bounding_box()["height"] < 60, "the top bar is one line"
    menu.click()
    assert page.get_attribute("header.top .menu-toggle", "aria-expanded") == "true"
    shown = [a.inner_text() for a in links.all() if a.is_visible()]
    assert {"Datasets", "New job", "Jobs", "Compare runs", "API docs"} <= set(shown), shown
    assert page.locator("header.top button", has_text="Sign out").is_visible() and no_sideways_scroll(page)
    menu.click()
    assert not links.first.is_visible()
    pages = [
        "/datasets/",
        f"/datasets/{dataset}/",
        f"/datasets/{dataset}/leaderboard/",
        "/models/",
        "/jobs/new/",
        "/jobs/",
        f"/jobs/{first}/",
        "/sweeps/",
        "/sweeps/new/",
        f"/jobs/compare/?job={first}&job={second}",
        f"/jobs/{first}/compare/",
        "/workers/",
        "/account/usage/",
        "/account/keys/",
        "/account/webhooks/",
        "/account/tracking/",
        "/api/docs/",
        "/no/such/page/",
    ]
    for path in pages:
        page.goto(stack.url + path)
        page.wait_for_load_state("networkidle")
        if path == "/api/docs/":
            page.locator("#swagger-ui .opblock").first.wait_for()
        assert no_sideways_scroll(page), f"{path} scrolls sideways at 390 px: {too_wide(page)}"
        assert cut_off(page) == [], f"{path} hides something past the right edge at 390 px"
        assert broken_code_words(page) == [], f"{path} breaks code words mid-word"
        assert page.locator("header.top .menu-toggle").is_visible(), f"{path} has no site navigation"
        assert duplicate_ids(page) == [], f"{path} repeats element ids"
    # Wide tables read as cards: each cell says which column it is.
    page.goto(stack.url + "/jobs/")
    status = page.locator("#jobs-table tbody tr").first.locator("td", has_text="succeeded")
    assert status.get_attribute("data-label") == "Status"
    assert page.locator("#jobs-table thead").bounding_box()["height"] <= 1, "the header row gives way to labels"
    page.goto(stack.url + "/datasets/")
    assert page.locator("main a.button", has_text="Train on this").first.is_visible()
    # The leaderboard: both runs as cards (beside the module's other runs on this dataset), ranked, the settings they
    # differ on marked, a way to chat.
    page.goto(f"{stack.url}/datasets/{dataset}/leaderboard/")
    for job in (first, second):
        assert page.locator(f"#leaderboard tbody tr a[href*='{job}']").count() >= 1, f"job {job} is not listed"
    assert page.locator("#leaderboard td.rank").first.inner_text() == "1"
    assert page.locator("#leaderboard mark.differs").first.is_visible()
    assert page.locator("#leaderboard a.chat-link").first.is_visible()
    page.goto(f"{stack.url}/jobs/{first}/")
    assert page.locator("#loss-chart").bounding_box()["height"] >= 200, "the chart keeps a readable height"
    # The chart also as a table, and status changes announced.
    page.wait_for_function(
        "document.querySelectorAll('#loss-table tbody tr').length === "
        "Chart.getChart('loss-chart').data.datasets[0].data.length && "
        "document.querySelectorAll('#loss-table tbody tr').length > 0"
    )
    assert page.get_attribute("#job-status", "aria-live") == "polite"
    # The job page: the API model id with code, settings in words, the log oldest first with times.
    model = page.inner_text("#api-model")
    assert model.startswith("ft:tiny-llama:") and model in page.text_content("#api-snippet")
    page.click("#all-settings summary")  # folded under "All settings"
    settings = page.inner_text(".grid2 .kv")
    assert "Gradient accumulation" in settings and "grad_accum" not in settings
    times = page.locator("#job-log time").evaluate_all("ts => ts.map(t => t.dateTime)")
    assert len(times) >= 2 and times == sorted(times)
    page.goto(f"{stack.url}/jobs/compare/?job={first}&job={second}")
    differing = page.locator("#runs-table tr.differs").evaluate_all("rows => rows.map(r => r.dataset.setting)")
    assert "rank" in differing and "learning_rate" not in differing, differing
    page.goto(stack.url + "/account/keys/")
    assert contrast(page, "#keys-table button.link") >= 4.5
    # A skip link leads keyboard users past the top bar.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    context.close()


def test_the_estimate_warns_when_the_max_length_cuts_examples_and_shows_a_time_before_any_job(stack, page, dataset):
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={dataset}")
    open_custom(page)
    page.fill("#id_max_seq_length", "16")
    page.click("#estimate-job")
    # The form estimates on load too (its warning: "only 8 examples"): wait for the answer to the new length.
    page.wait_for_function("""() => [...document.querySelectorAll('#estimate .estimate-warning')].some(
        w => w.textContent.includes('longer than 16 tokens and will be cut') || w.textContent.includes('still being counted'))""")
    warning = " ".join(page.locator("#estimate .estimate-warning").all_inner_texts())
    assert "longer than 16 tokens and will be cut" in warning or "still being counted" in warning, warning
    text = page.inner_text("#estimate")
    # Calibrated from this machine's speed, or measured once a job of this module ran on the model: a number.
    assert re.search(r"time: (about )?\d+ (s|min)", text) and "unknown" not in text, text


def test_advice_applies_with_one_click_and_the_new_estimate_fits(stack, page, api):
    """A job far too big for the worker: the estimate lists changes that would make it fit, each with an Apply
    button; one click sets that change's fields on the form and estimates again, and then it fits."""
    long_turn = " ".join(f"word{i}" for i in range(6000))  # thousands of tokens per example
    data = "".join(
        json.dumps({"messages": [{"role": "user", "content": long_turn}, {"role": "assistant", "content": f"ok {i}"}]})
        + "\n"
        for i in range(4)
    )
    long_set = api.post(stack.url + "/api/v1/datasets/", files={"file": ("long.jsonl", data.encode())}).json()["id"]
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/new/?dataset={long_set}")
    open_custom(page)
    page.fill("#id_max_seq_length", "65536")
    page.fill("#id_batch_size", "1024")
    page.click("#estimate-job")
    page.wait_for_selector("#estimate .estimate-advice .apply-advice")
    assert "Does not fit" in page.inner_text("#estimate")
    fields = ("batch_size", "grad_accum", "max_seq_length", "gradient_checkpointing", "qlora", "rank")
    before = {
        f: page.input_value(f"#id_{f}") if f not in ("gradient_checkpointing", "qlora") else page.is_checked(f"#id_{f}")
        for f in fields
    }
    page.locator("#estimate .estimate-advice .apply-advice").first.click()
    page.wait_for_function("""() => { const t = document.getElementById('estimate').textContent;
                                      return t.includes('Memory: about') && !t.includes('Estimating'); }""")
    after = {
        f: page.input_value(f"#id_{f}") if f not in ("gradient_checkpointing", "qlora") else page.is_checked(f"#id_{f}")
        for f in fields
    }
    assert after != before, "Apply changed no field"
    text = page.inner_text("#estimate")
    assert "Does not fit" not in text, text


def test_preference_pairs_train_with_dpo_on_top_of_the_last_job_in_one_click(stack, page, api, dataset):
    """The method follows the data: "Train on this" on preference pairs opens the form on DPO on top of the latest
    job on the same base, with the too-few warning; choosing the chat dataset switches the method back to
    supervised and the pairs again to DPO (the page never changes the dataset); Start makes the DPO job."""
    first = start_job(stack, api, dataset, max_steps=2)
    assert wait_status(stack, api, first, ("succeeded", "failed"), page) == "succeeded", stack.logs()
    lines = [{"prompt": f"colour {i}", "chosen": "red", "rejected": "blue"} for i in range(5)]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    pairs = api.post(stack.url + "/api/v1/datasets/", files={"file": ("pairs.jsonl", body)}).json()["id"]
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/datasets/")
    assert "Preference pairs" in page.locator(f"tr:has(a[href='/datasets/{pairs}/'])").inner_text()
    page.goto(f"{stack.url}/datasets/{pairs}/")
    assert "Only 5 preference pairs" in page.inner_text("#ds-size-warning")
    page.click("#train-on-this")
    page.wait_for_url("**/jobs/new/**")
    assert page.input_value("#id_dataset") == pairs and page.input_value("#id_method") == "dpo"
    assert page.input_value("#id_start_from") == first and "with DPO, on top of" in page.inner_text("#start-summary")
    assert "Only 5 preference pairs" in page.inner_text("#dataset-warning")
    page.click("#custom > summary")  # the method and its settings live under Custom settings
    page.select_option("#id_dataset", dataset)
    assert page.input_value("#id_method") == "supervised" and "now supervised" in page.inner_text("#dataset-note")
    assert "Only 8 examples" in page.inner_text("#dataset-warning") and not visible(page, "#field-beta")
    page.select_option("#id_dataset", pairs)
    assert page.input_value("#id_method") == "dpo" and visible(page, "#field-beta")
    assert page.input_value("#id_dataset") == pairs
    page.select_option("#id_validation", "none")
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*-*-*-*-*/")
    job = api.get(f"{stack.url}/api/v1/jobs/{page.url.rstrip('/').split('/')[-1]}/").json()
    assert job["config"]["method"] == "dpo" and job["config"]["start_from"] == first, job
    assert job["status"] in ("queued", "running", "succeeded"), job
    api.post(f"{stack.url}/api/v1/jobs/{job['id']}/cancel/")  # the worker is free for the next test
    compare_sft_and_dpo(stack, page, first, job["id"], pairs)


def compare_sft_and_dpo(stack, page, sft: str, dpo: str, pairs: str) -> None:
    """Compare runs on the SFT job and the DPO job on top of it: the dataset row first, only the differences
    until the switch is off, values in words, a loss chart per kind of loss, and the SFT run's eval loss the
    kept adapter's as its job page shows it."""
    page.goto(f"{stack.url}/jobs/compare/?job={sft}&job={dpo}")
    columns = page.locator("#runs-table thead th a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert sorted(columns) == sorted([f"/jobs/{sft}/", f"/jobs/{dpo}/"]), columns
    assert page.is_checked("#only-differences")
    first_row = page.locator("#runs-settings tr").first
    assert first_row.get_attribute("data-setting") == "dataset" and first_row.is_visible()
    assert "pairs.jsonl" in first_row.inner_text() and "5 preference pairs" in first_row.inner_text()
    assert first_row.locator(f"a[href='/datasets/{pairs}/']").count() == 1
    assert (
        page.locator("tr[data-setting=method]").is_visible()
        and page.locator("tr[data-setting=start_from]").is_visible()
    )
    same = page.locator("tr[data-setting=base_model]")
    assert not same.is_visible() and "where the runs differ" in page.inner_text("#differences-note")
    page.uncheck("#only-differences")
    assert same.is_visible() and "Showing all" in page.inner_text("#differences-note")
    text = page.inner_text("#runs-table")
    assert not re.search(r"\b(False|True|None)\b|\[\]", text), text
    beta = page.locator("tr[data-setting=beta] td").all_inner_texts()
    assert beta[columns.index(f"/jobs/{sft}/")] == "—" and beta[columns.index(f"/jobs/{dpo}/")] == "0.1"
    # A chart per kind of loss, each holding only its own runs, its axis in words.
    page.wait_for_function("Chart.getChart('runs-chart-supervised') && Chart.getChart('runs-chart-dpo')")
    series = json.loads(page.inner_text("#runs-data"))
    charts = page.evaluate("""() => ['supervised', 'dpo'].map(k => { const c = Chart.getChart('runs-chart-' + k);
        return {axis: c.options.scales.y.title.text, labels: c.data.datasets.map(d => d.label)}; })""")
    assert [c["axis"] for c in charts] == ["supervised loss", "DPO loss"], charts
    method_of = {s["label"]: s["method"] for s in series}
    assert sorted(method_of.values()) == ["dpo", "supervised"] and charts[0]["labels"], (series, charts)
    for chart, kind in zip(charts, ("supervised", "dpo")):
        assert all(method_of[label.rsplit(" ", 1)[0]] == kind for label in chart["labels"]), (kind, chart)
    kept = page.locator("tr[data-result=eval-loss] td").all_inner_texts()[columns.index(f"/jobs/{sft}/")]
    page.goto(f"{stack.url}/jobs/{sft}/")
    assert kept == page.inner_text("#evaluation td[data-key=adapter-loss]") and re.fullmatch(r"\d+\.\d{4}", kept)


def test_the_job_form_without_data_offers_the_demo_and_an_upload_not_a_start(stack, page):
    """A user without a dataset sees a friendly way to get one where the form would start a job (no red box, no
    Start button to press); the demo dataset opens the form on it, ready to start."""
    sign_in(page, stack, "bob")
    page.goto(stack.url + "/jobs/new/")
    panel = page.locator("#no-data")
    assert panel.is_visible() and "dataset" in panel.inner_text()
    assert page.locator("#no-data input[type=file]").is_visible()
    assert page.locator("main .errors").count() == 0, "no error before the user did anything"
    assert page.locator("#submit-job:enabled").count() == 0, "no Start button to press without data"
    page.click("#no-data-demo")
    page.wait_for_url("**/jobs/new/?dataset=*")
    assert page.locator("#no-data").count() == 0 and page.locator("#submit-job").is_enabled()


def test_the_first_page_after_sign_in_starts_a_new_user_from_the_demo(stack, browser):
    """A user without a job lands on a welcome that says what the product does and offers the demo dataset and
    an upload right there (at phone width); the demo opens the job form on it, ready to start."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
    page = context.new_page()
    sign_in(page, stack, "bob")
    assert "Teach a language model a new skill" in page.inner_text("#welcome") and no_sideways_scroll(page)
    assert page.locator("#welcome input[type=file]").is_visible()
    page.click("#welcome-demo")
    page.wait_for_url("**/jobs/new/?dataset=*")
    assert page.input_value("#id_dataset") == page.url.split("dataset=")[1]
    assert page.input_value("#id_method") == "supervised"
    assert "Trains on your 160 examples" in page.inner_text("#start-summary")
    context.close()
