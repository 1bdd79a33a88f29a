"""Three models side by side, then a blind A/B round: the vote names the models and updates the win-rate
table without a reload — in Chromium, against the real web server and infer worker."""

import re

import pytest

from tests.browser.pages import sign_in
from tests.integration.stack import read_sse
from tests.integration.test_end_to_end import upload_and_submit

pytestmark = pytest.mark.browser
ALL_DONE = (
    "n => document.querySelectorAll('#columns .answer').length === n && "
    "document.querySelectorAll('#columns .answer.pending').length === 0"
)


def finished_jobs(stack, count: int) -> list[str]:
    """Train `count` one-epoch jobs (two steps each) and wait until each has succeeded."""
    s = stack.session()
    ids = [upload_and_submit(stack, s, epochs="1", seed=str(i)) for i in range(count)]
    for job_id in ids:
        with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=60) as r:
            statuses = [
                d["status"]
                for e, d in read_sse(
                    r, lambda e, d: e == "status" and d["status"] in ("succeeded", "failed", "cancelled"), limit_s=180
                )
                if e == "status"
            ]
        assert statuses[-1] == "succeeded", stack.logs()
    return ids


@pytest.fixture(scope="module")
def two_jobs(stack) -> list[str]:
    """Two succeeded jobs of alice's, trained once for the module's tests."""
    return finished_jobs(stack, 2)


def ask(page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#ask")


def test_side_by_side_then_blind_vote_reveals_and_counts(stack, page, two_jobs):
    first, second = two_jobs
    page.on("dialog", lambda dialog: dialog.accept())  # a new selection of models asks before clearing the answers
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{first}/compare/")
    page.click("summary")
    page.fill("[name=max_new_tokens]", "6")
    assert page.inner_text("#win-rates tbody") == "No votes yet."

    # Three models on one base, one prompt: every column streams its answer.
    page.check(f"#contestants input[value='{second}']")
    ask(page, "colour 2")
    page.wait_for_function(ALL_DONE, arg=3, timeout=120_000)
    headings = page.locator("#columns h2").all_inner_texts()
    assert headings[0] == "tiny-llama (base)" and len(headings) == 3
    assert headings[1:] == [f"e2e ({first[:8]})", f"e2e ({second[:8]})"]
    assert page.is_hidden("#vote-bar")  # a vote compares two

    # Blind A/B of the base and this job: unlabeled columns, then the vote names them.
    page.uncheck(f"#contestants input[value='{second}']")
    page.check("#blind")
    assert page.locator("#columns .answer").count() == 0  # a new selection starts a new comparison
    ask(page, "colour 1")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    assert page.locator("#columns h2").all_inner_texts() == ["Model A", "Model B"]
    assert "(base)" not in page.inner_text("#columns")
    page.click("#vote-bar [data-choice=left]")
    page.wait_for_selector("#vote-result:not(.hidden)")
    result = page.inner_text("#vote-result")
    reveals = page.locator("#columns .reveal").all_inner_texts()
    assert sorted(reveals) == sorted(["— tiny-llama (base)", f"— e2e ({first[:8]})"]), reveals
    left = reveals[0].removeprefix("— ")
    assert result.startswith(f"Your vote: {left} (left) is better. Left was {left}")
    assert page.is_hidden("#vote-bar")
    blind_texts = page.evaluate("[...document.querySelectorAll('#columns .answer')].map(a => a.textContent)")

    # The win-rate table counts the vote for the model that was on the left, without a reload, and states
    # the adapter's rate against the base (the API gives the base's).
    page.locator("#win-rates tbody td", has_text=f"e2e ({first[:8]})").first.wait_for()  # drawn after the vote
    cells = page.locator("#win-rates tbody tr").first.locator("td").all_inner_texts()
    assert cells[:2] == [f"e2e ({first[:8]})", "tiny-llama (base)"] and cells[6] == "1"
    assert cells[2:4] == (["0", "1"] if "(base)" in left else ["1", "0"])
    rate = "0%" if "(base)" in left else "100%"
    assert cells[7].startswith(f"e2e ({first[:8]}) wins {rate} against tiny-llama (base); 95% CI "), cells[7]
    page.screenshot(path=str(stack.tmp / "compare-vote.png"), full_page=True)

    page.reload()  # the stored vote is in the table on a fresh page too
    page.locator("#win-rates tbody td", has_text=f"e2e ({first[:8]})").first.wait_for()
    assert page.locator("#win-rates tbody tr").first.locator("td").all_inner_texts() == cells

    # Stop: a long answer ends early and keeps what it had said; the queued one never starts.
    page.uncheck("#blind")
    page.click("summary")
    page.fill("[name=max_new_tokens]", "1024")  # CHAT_MAX_NEW_TOKENS: on an idle CPU 400 could end before the click
    ask(page, "colour 3")
    page.wait_for_function(
        "[...document.querySelectorAll('#columns .answer')].some(a => a.textContent.length > 0)", timeout=60_000
    )
    page.click("#stop")
    page.wait_for_function(ALL_DONE, arg=2, timeout=60_000)
    assert page.locator("#columns .answer.stopped").count() == 2
    assert page.is_hidden("#stop")
    stopped = page.locator("#columns .answer").all_inner_texts()
    assert all(text.endswith("(stopped)") for text in stopped), stopped

    # The vote becomes data: a preference dataset from the page, which stays as it is.
    assert page.inner_text("#vote-counts [data-count=usable]") == "1"
    page.click("#make-votes-dataset")
    page.wait_for_function(
        "!document.querySelector('#make-votes-dataset').disabled"
        " && !document.querySelector('#votes-dataset-result').textContent.startsWith('Making')"
    )
    made = page.inner_text("#votes-dataset-result")
    # A barely trained adapter may say what the base says (or nothing): then there is nothing to prefer.
    if blind_texts[0] == blind_texts[1] or not all(t.strip() for t in blind_texts):
        assert "same text" in made or "was empty" in made, (made, blind_texts)
        return
    assert made.startswith("1 vote became preference pairs."), made
    page.click("#votes-dataset-result a")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#ds-rows") == "1" and "1 compare vote" in page.inner_text("#ds-source")
    page.wait_for_selector("#check-form", timeout=60_000)  # the background worker counts both sides
    assert page.locator(".sample.chosen .tok.trained").count() >= 1
    assert page.locator(".sample.rejected .tok.masked").first.inner_text().count("colour 1") == 1
    page.wait_for_function("Chart.getChart('length-histogram') !== undefined")
    assert page.evaluate("Chart.getChart('length-histogram').data.datasets.map(d => d.label)") == [
        "prompt + chosen",
        "prompt + rejected",
    ]

    # ... which trains a DPO job through the form (the method and the data agree), then is compared.
    page.click("text=Train on this")
    page.wait_for_url("**/jobs/new/**")
    page.click("#custom summary")
    page.select_option("#id_method", "dpo")
    page.select_option("#id_validation", "none")
    page.click("#submit-job")
    page.wait_for_url("**/jobs/*-*-*-*-*/")
    page.wait_for_function(
        "['succeeded', 'failed'].includes(document.querySelector('#job-status').textContent.trim())", timeout=180_000
    )
    assert page.inner_text("#job-status").strip() == "succeeded", stack.logs()
    dpo_job = page.url.rstrip("/").split("/")[-1]
    page.goto(f"{stack.url}/jobs/{dpo_job}/compare/")
    ask(page, "colour 1")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)


def test_compare_keys_stats_and_blind_rounds_keep_names_hidden(stack, page, two_jobs):
    """Enter and Ctrl+Enter send, Shift+Enter is a new line; each answer shows its latency and length in a live
    region; a new selection of models asks first; three models say why there is no vote; a blind round's names
    come only with its own vote and leave the screen when the next blind round starts."""
    first, second = two_jobs
    dialogs = []
    page.on("dialog", lambda d: dialogs.append(d.message) or (d.dismiss() if len(dialogs) == 1 else d.accept()))
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{first}/compare/")
    page.click("summary")
    page.fill("[name=max_new_tokens]", "4")

    page.fill("#prompt", "colour 1")
    page.press("#prompt", "Shift+Enter")
    assert page.input_value("#prompt") == "colour 1\n" and page.locator("#columns .answer").count() == 0
    page.press("#prompt", "Enter")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    assert page.locator("#columns .answer[aria-live=polite][aria-busy=false]").count() == 2
    stats = page.locator("#columns .answer-stats").all_inner_texts()
    assert len(stats) == 2 and all(
        re.fullmatch(r"(first token \d+\.\d+ s|no text) · total \d+\.\d+ s · \d+ tokens?", t) for t in stats
    ), stats
    page.fill("#prompt", "colour 2")
    page.press("#prompt", "Control+Enter")
    page.wait_for_function(ALL_DONE, arg=4, timeout=120_000)

    # Ticking a third model asks first: declined, the box and the conversation stay; accepted, a new comparison.
    page.click(f"#contestants input[value='{second}']")
    assert len(dialogs) == 1 and "clears the answers" in dialogs[0]
    assert not page.is_checked(f"#contestants input[value='{second}']")
    assert page.locator("#columns .answer").count() == 4
    page.click(f"#contestants input[value='{second}']")
    assert len(dialogs) == 2 and page.locator("#columns .answer").count() == 0
    assert page.inner_text("#vote-hint") == "Votes compare two models; untick one to vote."
    page.uncheck(f"#contestants input[value='{second}']")
    assert page.is_hidden("#vote-hint")

    # Blind: round 1's vote names round 1; asking round 2 takes those names off the screen.
    page.check("#blind")
    ask(page, "colour 1")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    page.click("#vote-bar [data-choice=tie]")
    page.wait_for_selector("#vote-result:not(.hidden)")
    assert "(base)" in page.inner_text("#columns")
    ask(page, "colour 3")
    page.wait_for_function(ALL_DONE, arg=4, timeout=120_000)
    assert "(base)" not in page.inner_text("#columns") and "e2e" not in page.inner_text("#columns")
    assert "(base)" not in page.text_content("#vote-result")
    page.click("#vote-bar [data-choice=tie]")
    page.wait_for_selector("#vote-result:not(.hidden)")
    reveals = page.locator("#columns .reveal").all_inner_texts()
    assert [bool(r) for r in reveals] == [False, True, False, True], reveals  # each column: round 1, round 2
