"""The pages' shared poll loop (static/app/poll.js) and the Models page's use of it (base_models.js), and the Ask a
judge page's (judge.js), run in Chromium against a stand-in API served by Playwright's router: progress is drawn
from each answer, a failed read is retried, and the page reloads (or redraws its part) once the work has ended."""

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
