"""Three models side by side, then blind A/B rounds: each vote names that round's models and updates the
win-rate table, said in plain words, without a reload; "New chat" starts over; nothing opens a browser pop-up
— in Chromium, against the real web server and infer worker."""

import re

import pytest

from tests.browser.pages import open_custom, sign_in
from tests.integration.stack import read_sse
from tests.integration.test_end_to_end import upload_and_submit

pytestmark = pytest.mark.browser
ALL_DONE = (
    "n => document.querySelectorAll('#columns .answer').length === n && "
    "document.querySelectorAll('#columns .answer.pending').length === 0"
)
# A blind round's two answers are done (the columns show that round alone, so wait for its prompt).
ROUND_DONE = (
    "p => { const who = [...document.querySelectorAll('#columns .who')].map(w => w.textContent); "
    "return who.length === 2 && who.every(w => w === 'You: ' + p) && "
    "document.querySelectorAll('#columns .answer.pending').length === 0; }"
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


def no_native_dialogs(page) -> list[str]:
    """Every browser pop-up (alert, confirm, prompt) the page opens, dismissed: the compare page must open none."""
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(f"{dialog.type}: {dialog.message}") or dialog.dismiss())
    return dialogs


def start_new_chat(page) -> None:
    """Answer the page's own question about a change of models or mode: start a new chat."""
    page.locator("#change-question").get_by_role("button", name="Start a new chat", exact=True).click()


def test_side_by_side_then_blind_vote_reveals_and_counts(stack, page, two_jobs):
    first, second = two_jobs
    dialogs = no_native_dialogs(page)
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
    page.check("#blind")  # one question in the page covers both changes
    assert page.locator("#columns .answer").count() == 3
    start_new_chat(page)
    assert page.locator("#columns .answer").count() == 0  # a new selection starts a new chat
    ask(page, "colour 1")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    assert page.locator("#columns h2").all_inner_texts() == ["Model A", "Model B"]
    assert "(base)" not in page.inner_text("#columns")
    assert page.locator("#vote-bar button").all_inner_texts()[:2] == ["A is better", "B is better"]
    page.click("#vote-bar [data-choice=left]")
    page.wait_for_selector("#vote-result:not(.hidden)")
    result = page.inner_text("#vote-result")
    headings = page.locator("#columns h2").all_inner_texts()
    names = [heading.removeprefix(f"Model {x} was ") for x, heading in zip("AB", headings)]
    assert sorted(names) == sorted(["tiny-llama (base)", f"e2e ({first[:8]})"]), headings
    left = names[0]
    assert result == f"Your vote: Model A is better. Model A was {left}, Model B was {names[1]}."
    assert page.is_hidden("#vote-bar")
    blind_texts = page.evaluate("[...document.querySelectorAll('#columns .answer')].map(a => a.textContent)")

    # The win-rate table counts the vote for the model that was on the left, without a reload, and states
    # the adapter's rate against the base (the API gives the base's).
    page.locator("#win-rates tbody td", has_text=f"e2e ({first[:8]})").first.wait_for()  # drawn after the vote
    cells = page.locator("#win-rates tbody tr").first.locator("td").all_inner_texts()
    assert cells[:2] == [f"e2e ({first[:8]})", "tiny-llama (base)"] and cells[6] == "1"
    assert cells[2:4] == (["0", "1"] if "(base)" in left else ["1", "0"])
    won, rate = ("0", "0 %") if "(base)" in left else ("1", "100 %")
    assert cells[7].startswith(
        f"e2e ({first[:8]}) won {won} of 1 vote ({rate}) against tiny-llama (base). "
        "With this few votes the true rate could be anywhere from "
    ), cells[7]
    page.screenshot(path=str(stack.tmp / "compare-vote.png"), full_page=True)

    page.reload()  # the stored vote is in the table on a fresh page too
    page.locator("#win-rates tbody td", has_text=f"e2e ({first[:8]})").first.wait_for()
    assert page.locator("#win-rates tbody tr").first.locator("td").all_inner_texts() == cells

    # Stop: a long answer ends early and keeps what it had said; the queued one never starts.
    page.uncheck("#blind")  # after the reload nothing is on screen: no question
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
    assert dialogs == []
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
    open_custom(page)
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


def test_compare_keys_stats_and_a_new_selection_asks_in_the_page(stack, page, two_jobs):
    """Enter and Ctrl+Enter send, Shift+Enter is a new line; each answer shows its latency and length in a live
    region; a new selection of models asks first, in the page (no browser pop-up); three models say why there is
    no vote."""
    first, second = two_jobs
    dialogs = no_native_dialogs(page)
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

    # Ticking a third model asks first, in the page, the safe answer focused: kept, the box and the conversation
    # stay; a new chat clears them.
    third = f"#contestants input[value='{second}']"
    question = page.locator("#change-question [role=alertdialog]")
    page.click(third)
    assert "answers on screen are cleared" in question.inner_text()
    assert page.evaluate("document.activeElement.textContent") == "Keep this chat"
    page.click("#ask")  # not while the question is open
    assert "First answer the question above" in page.inner_text("#compare-error")
    page.locator("#change-question").get_by_role("button", name="Keep this chat", exact=True).click()
    assert question.count() == 0 and not page.is_checked(third)
    assert page.locator("#columns .answer").count() == 4
    page.click(third)
    page.keyboard.press("Escape")  # Escape keeps the chat too
    assert question.count() == 0 and not page.is_checked(third)
    page.click(third)
    start_new_chat(page)
    assert page.is_checked(third) and page.locator("#columns .answer").count() == 0
    assert page.inner_text("#vote-hint") == "Votes compare two models; untick one to vote."
    page.uncheck(third)  # nothing on screen: nothing to ask
    assert question.count() == 0 and page.is_hidden("#vote-hint")
    assert dialogs == []


def test_blind_rounds_stand_alone_each_named_after_its_vote_and_new_chat_starts_over(stack, page, two_jobs):
    """A chat carries its history until "New chat"; blind mode is a switch in the page; each blind round shows only
    its own answers under A and B, its vote names who was who (and lists the round below); the win rate is a
    sentence; no browser pop-up at any point."""
    first, _ = two_jobs
    dialogs = no_native_dialogs(page)
    sent: list[dict] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/chat/") and sent.append(r.post_data_json))
    sign_in(page, stack, "alice")
    page.goto(f"{stack.url}/jobs/{first}/compare/")
    assert page.locator("[data-confirm]").count() == 0
    page.click("summary")
    page.fill("[name=max_new_tokens]", "4")
    models = {"tiny-llama (base)", f"e2e ({first[:8]})"}

    # The conversation goes on (the second message carries the chat), until New chat empties the screen and the
    # next message goes without it.
    ask(page, "colour 1")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    ask(page, "colour 2")
    page.wait_for_function(ALL_DONE, arg=4, timeout=120_000)
    assert "session" not in sent[0] and "session" in sent[1]
    page.click("#new-chat")
    assert page.locator("#columns .turn").count() == 0 and page.is_hidden("#vote-bar")
    ask(page, "colour 3")
    page.wait_for_function(ALL_DONE, arg=2, timeout=120_000)
    assert len(sent) == 3 and "session" not in sent[2]
    assert page.locator("#columns .who").all_inner_texts() == ["You: colour 3"] * 2

    # Blind mode: a switch in the page with a line saying what it does.
    assert page.get_attribute("#blind", "role") == "switch"
    assert "after you vote" in page.inner_text("#blind-help")
    page.check("#blind")
    start_new_chat(page)
    assert page.locator("#columns .turn").count() == 0

    for n, (prompt, choice, verdict) in enumerate(
        [
            ("colour 1", "left", "Model A is better"),
            ("colour 2", "right", "Model B is better"),
            ("colour 3", "tie", "a tie"),
        ],
        start=1,
    ):
        ask(page, prompt)
        page.wait_for_function(ROUND_DONE, arg=prompt, timeout=120_000)
        # Only this round's answers, under letters that name nobody yet.
        assert page.locator("#columns .who").all_inner_texts() == [f"You: {prompt}"] * 2, n
        assert page.locator("#columns h2").all_inner_texts() == ["Model A", "Model B"]
        assert not any(name in page.inner_text("#columns") for name in models)
        assert page.inner_text("#round-label").startswith(f"Blind round {n}: the two models in a new random order")
        assert sent[-1]["blind"] is True and page.locator("#blind-rounds li").count() == n - 1
        page.click(f"#vote-bar [data-choice={choice}]")
        page.wait_for_selector("#vote-result:not(.hidden)")
        # The vote names this round's models: in the columns, in the result and in the list of rounds.
        headings = page.locator("#columns h2").all_inner_texts()
        names = [heading.removeprefix(f"Model {x} was ") for x, heading in zip("AB", headings)]
        assert set(names) == models, headings
        assert page.inner_text("#vote-result") == (
            f"Your vote: {verdict}. Model A was {names[0]}, Model B was {names[1]}."
        )
        rounds = page.locator("#blind-rounds li").all_inner_texts()
        assert len(rounds) == n and rounds[-1] == (
            f"Round {n} (“{prompt}”): Model A was {names[0]}, Model B was {names[1]}. Your vote: {verdict}."
        ), rounds

    # A round left without a vote stays unnamed in the list once the next one starts.
    ask(page, "colour 4")
    page.wait_for_function(ROUND_DONE, arg="colour 4", timeout=120_000)
    ask(page, "colour 5")
    page.wait_for_function(ROUND_DONE, arg="colour 5", timeout=120_000)
    assert page.locator("#columns .who").all_inner_texts() == ["You: colour 5"] * 2
    rounds = page.locator("#blind-rounds li").all_inner_texts()
    assert rounds[3] == "Round 4 (“colour 4”): No vote, so its models stay unnamed." and len(rounds) == 4
    assert not any(name in rounds[3] for name in models)

    # New chat in blind mode: the columns and the list of rounds empty; counting starts again.
    page.click("#new-chat")
    assert page.locator("#columns .turn").count() == 0 and page.locator("#blind-rounds li").count() == 0
    assert page.is_hidden("#blind-log") and page.is_hidden("#round-label") and page.is_hidden("#vote-bar")
    ask(page, "colour 6")
    page.wait_for_function(ROUND_DONE, arg="colour 6", timeout=120_000)
    assert "session" not in sent[-1] and page.inner_text("#round-label").startswith("Blind round 1:")

    # The win rate in plain words, the statistics only in a tooltip; the sentence agrees with the counts beside it.
    row = page.locator("#win-rates tbody tr", has_text=f"e2e ({first[:8]})").first.locator("td")
    cells = row.all_inner_texts()
    assert cells[:2] == [f"e2e ({first[:8]})", "tiny-llama (base)"], cells
    wins, losses, ties, both_bad, votes = map(int, cells[2:7])
    assert votes >= 3 and ties >= 1
    rate = int(100 * (wins + (ties + both_bad) / 2) / votes + 0.5)  # rounded half up, as the page rounds
    said = re.fullmatch(
        rf"e2e \({first[:8]}\) won {wins} of {votes} votes against tiny-llama \(base\) and lost {losses}; .+ so its "
        rf"win rate is {rate} %\. With this few votes the true rate could be anywhere from (\d+) % to (\d+) %\.",
        cells[7],
    )
    assert said and int(said[1]) <= rate <= int(said[2]), cells[7]
    assert "Wilson" in row.nth(7).get_attribute("title")
    assert "Wilson" not in page.inner_text("#win-rates") and "CI" not in page.inner_text("#win-rates")
    page.screenshot(path=str(stack.tmp / "compare-blind-rounds.png"), full_page=True)
    assert dialogs == []
