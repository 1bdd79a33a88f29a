"""The pages' shared poll loop (static/app/poll.js) and the Models page's use of it (base_models.js), run in
Chromium against a stand-in API served by Playwright's router: progress is drawn from each answer, a failed read
is retried, and the page reloads (or redraws its part) once the work has ended; the Ask a judge page (judge.js)
and the job page's Benchmarks card (benchmarks.js) follow their work to its result."""

import json
from pathlib import Path

import pytest

from tests.waiting import page_sleep, wait_until

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "static" / "app"
ORIGIN = "http://studio.test"
MODELS_PAGE = """<!doctype html><html><body>
<div class="model-progress" data-model-poll="/api/v1/base-models/7/">
  <span data-model-status>queued</span><progress max="100"></progress><span data-model-text></span>
</div>
<script src="/static/app/poll.js"></script><script src="/static/app/base_models.js"></script>
</body></html>"""


def test_the_models_page_follows_a_download_and_reloads_when_it_ends(page):
    answers = [
        {"status": "queued"},
        None,  # None: the API fails once; the loop retries
        {"status": "downloading", "bytes_done": 1048576, "bytes_total": 4194304},
        {"status": "converting"},
        {"status": "ready"},
    ]
    loads = []

    def serve(route):
        url = route.request.url
        if url.endswith(".js"):
            route.fulfill(body=(STATIC / url.rsplit("/", 1)[1]).read_text(), content_type="text/javascript")
        elif "/api/v1/base-models/7/" in url:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if answer is None:
                route.fulfill(status=502, body="")
            else:
                route.fulfill(body=json.dumps(answer), content_type="application/json")
        else:
            loads.append(url)
            route.fulfill(body=MODELS_PAGE, content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/models/")
    page.locator("[data-model-text]", has_text="1 MB of 4 MB").wait_for(timeout=10_000)
    assert page.inner_text("[data-model-status]") == "downloading"
    assert page.locator("progress").evaluate("p => [p.value, p.max]") == [1048576, 4194304]
    page.locator("[data-model-text]", has_text="Converting the GGUF file").wait_for(timeout=10_000)
    wait_until(lambda: len(loads) >= 2, timeout=10, interval=0.2, what="the page to reload", sleep=page_sleep(page))
    assert len(loads) >= 2, "the page reloads once the download has ended"


def _judge_page(status: str, done: int, said: str) -> str:
    return f"""<!doctype html><html><body>
<section id="judgement" data-url="/api/v1/judgements/9/" data-status="{status}">
  <p><span data-done>{done}</span> of 2 prompts judged.</p><p id="judge-agreement">{said}</p>
</section>
<script src="/static/app/poll.js"></script><script src="/static/app/judge.js"></script>
</body></html>"""


def test_the_judge_page_redraws_its_judgement_as_prompts_are_judged_and_stops_once_it_ends(page):
    answers = [{"status": "running", "done": 1}, {"status": "done", "done": 2}]
    pages = [_judge_page("running", 1, "judging"), _judge_page("done", 2, "The judge agreed with you on 2 of 2")]
    reads = []

    def serve(route):
        url = route.request.url
        if url.endswith(".js"):
            route.fulfill(body=(STATIC / url.rsplit("/", 1)[1]).read_text(), content_type="text/javascript")
        elif "/api/v1/judgements/9/" in url:
            reads.append(url)
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            route.fulfill(body=json.dumps(answer), content_type="application/json")
        else:
            route.fulfill(body=pages.pop(0) if len(pages) > 1 else pages[0], content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/jobs/1/judge/?judgement=9")
    page.locator("#judge-agreement", has_text="agreed with you on 2 of 2").wait_for(timeout=15_000)
    assert page.inner_text("[data-done]") == "2" and page.get_attribute("#judgement", "data-status") == "done"
    seen = len(reads)
    page_sleep(page)(2.0)  # more than a tick (1.5 s)
    assert len(reads) == seen, "a judgement that has ended is not read again"


BENCHMARK_PAGE = """<!doctype html><html><body>
<section id="benchmarks" data-list-url="/api/v1/jobs/9/benchmarks/" data-suites-url="/api/v1/benchmarks/suites/"
  data-datasets-url="/api/v1/datasets/" data-cancel-url="/api/v1/benchmarks/">
<form id="benchmark-form"><input type="hidden" name="csrfmiddlewaretoken" value="t">
  <div id="benchmark-suites"></div><select name="dataset"><option value="">none</option></select>
  <select name="scoring"><option value="exact_match">exact</option></select><input name="limit" value="5">
  <button type="submit" id="benchmark-run">Run</button> <span data-error-for="suites"></span>
  <span data-error-for="dataset"></span><span data-error-for="scoring"></span><span data-error-for="limit"></span>
</form><div id="benchmark-runs"></div></section>
<script src="/static/app/benchmarks.js"></script></body></html>"""


def test_the_benchmark_card_follows_a_run_and_shows_base_vs_adapted_with_the_warning(page):
    """static/app/benchmarks.js: the suites offered, a refusal shown beside its field, a running run followed to
    its table of base vs adapted with the interval, an unavailable task in words and the forgetting warning."""
    score = lambda v, lo, hi: {"value": v, "stderr": 0.05, "low": lo, "high": hi}  # noqa: E731
    run = {"id": "r1", "suites": ["general-skills"], "dataset": "", "scoring": "", "created_at": "2026-01-01T00:00:00Z",
           "status": "running", "stage": "general_arithmetic: base", "progress": 0.25, "error": "", "warnings": [],
           "results": []}  # fmt: skip
    ready = {**run, "status": "ready", "progress": 1.0, "warnings": ["The adapter lost 32.0 points on general_arithmetic"],
             "results": [
                 {"task": "general_arithmetic", "metric": "exact_match", "general": True, "examples": 50,
                  "unavailable": None, "base": score(0.62, 0.5, 0.74), "adapted": score(0.3, 0.2, 0.4)},
                 {"task": "gsm8k", "metric": "exact_match", "general": True, "examples": 0,
                  "unavailable": "gsm8k could not load its data (offline)"}]}  # fmt: skip
    lists = [[run], [ready]]
    posted = []

    def serve(route):
        url, method = route.request.url, route.request.method
        if url.endswith(".js"):
            route.fulfill(
                body=(STATIC / url.rsplit("/", 1)[1]).read_text(), content_type="text/javascript; charset=utf-8"
            )
        elif url.endswith("/benchmarks/suites/"):
            suites = [{"name": "general-skills", "title": "General skills", "bundled": True, "general": True, "tasks": []},
                      {"name": "gsm8k", "title": "GSM8K", "bundled": False, "general": True, "tasks": ["gsm8k"]}]  # fmt: skip
            route.fulfill(body=json.dumps(suites), content_type="application/json")
        elif url.endswith("/datasets/"):
            route.fulfill(body=json.dumps([{"id": "d1", "name": "colours"}]), content_type="application/json")
        elif url.endswith("/jobs/9/benchmarks/") and method == "POST":
            posted.append(json.loads(route.request.post_data))
            error = {"error": {"field": "suites.1", "message": "unknown suite 'x'"}}
            route.fulfill(status=400, body=json.dumps(error), content_type="application/json")
        elif url.endswith("/jobs/9/benchmarks/"):
            answer = lists.pop(0) if len(lists) > 1 else lists[0]
            route.fulfill(body=json.dumps(answer), content_type="application/json")
        else:
            route.fulfill(body=BENCHMARK_PAGE, content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/jobs/9/")
    page.locator("#benchmark-runs [role=status]", has_text="general_arithmetic: base… 25 %").wait_for(timeout=10_000)
    assert page.locator("#suite-general-skills").is_checked() and not page.locator("#suite-gsm8k").is_checked()
    assert page.locator("select[name=dataset] option[value=d1]").count() == 1
    row = page.locator("tr[data-task=general_arithmetic]")
    row.wait_for(timeout=10_000)
    assert "62.0% (50.0%–74.0%)" in row.inner_text() and "-32.0 points" in row.inner_text()
    assert "could not load its data (offline)" in page.inner_text("#benchmark-runs")
    assert "lost 32.0 points" in page.inner_text("#benchmark-runs [role=alert]")
    page.click("#benchmark-run")
    page.locator("[data-error-for=suites]", has_text="unknown suite 'x'").wait_for(timeout=10_000)
    assert posted == [{"suites": ["general-skills"], "scoring": "exact_match", "limit": 5}]
