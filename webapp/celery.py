import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

# Every task runs within its kind's share of the background worker's threads (jobs.common.shares).
app = Celery("lora_studio", task_cls="jobs.common.shares:SharedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
