"""Hub tokens leave the database: a download still waiting for (or in) its run at the upgrade keeps its token,
moved to Redis with the expiry new ones get (best effort: without Redis that download goes on without it)."""

import logging

import redis
from django.conf import settings
from django.db import migrations

log = logging.getLogger(__name__)


def move_pending_tokens(apps, schema_editor):
    BaseModel = apps.get_model("base_models", "BaseModel")
    pending = BaseModel.objects.exclude(hub_token="").filter(status__in=["queued", "downloading"])
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)
        for model_id, token in pending.values_list("id", "hub_token"):
            client.set(f"hub-token:{model_id}", token, ex=settings.HUB_TOKEN_SECONDS)
    except redis.RedisError as exc:
        log.warning("Hub tokens of pending downloads not moved to Redis: %s", exc)


class Migration(migrations.Migration):
    dependencies = [("base_models", "0004_basemodel_stored_bytes")]

    operations = [
        migrations.RunPython(move_pending_tokens, migrations.RunPython.noop),
        migrations.RemoveField(model_name="basemodel", name="hub_token"),
    ]
