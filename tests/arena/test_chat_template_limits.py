"""A base model whose chat template loops for ever (a user's model, or one registered before templates were
checked) does not hold the chat worker: the answer fails within seconds, naming the limit, and the page hears why."""

import shutil
import time
from unittest import mock

from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer
from jobs.base_models.models import BaseModel
from jobs.common import events as common_events
from tests.arena.test_chat_stop import ask
from tests.arena.test_compare_votes import finished_job

SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"


def test_a_template_past_its_limits_fails_the_answer_with_the_reason(
    user, base_model, tmp_path, django_capture_on_commit_callbacks
):
    folder = shutil.copytree(base_model.path, tmp_path / "slow-template")
    (folder / "chat_template.jinja").write_text(SLOW_TEMPLATE)
    BaseModel.objects.filter(id=base_model.id).update(path=str(folder))
    job = finished_job(user, base_model, "colours")
    _, answers = ask(user, job, django_capture_on_commit_callbacks)
    published = []
    started = time.monotonic()
    with mock.patch.object(common_events, "publish", lambda channel, kind, data: published.append((kind, data))):
        assert chat_tasks.chat_answer(str(answers["base"].id)) == "failed"
    assert time.monotonic() - started < 10
    failed = ChatAnswer.objects.get(id=answers["base"].id)
    assert failed.state == "failed" and "more than 1,000,000 loop steps" in failed.error
    (error,) = [d["error"] for k, d in published if k == "error"]
    assert error.startswith("the chat template runs more than 1,000,000 loop steps")
