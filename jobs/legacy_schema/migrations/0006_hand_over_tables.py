"""Hands every table to the domain app that now owns it: the models leave this app's state (the
tables, named `jobs_*`, and their rows stay as they are), and the content types (and so the
permissions and admin history) move to the new app labels."""

from django.db import migrations

NEW_LABELS = {
    "apikey": "accounts",
    "basemodel": "base_models",
    "dataset": "user_datasets",
    "finetunejob": "training",
    "metricpoint": "training",
    "jobevent": "training",
    "adapter": "training",
    "chatsession": "arena",
    "chatround": "arena",
    "chatanswer": "arena",
    "vote": "arena",
    "webhook": "webhooks",
    "webhookdelivery": "webhooks",
}
# Models that others point to leave last.
ORDER = [
    "Vote",
    "ChatAnswer",
    "ChatRound",
    "ChatSession",
    "WebhookDelivery",
    "Webhook",
    "ApiKey",
    "Adapter",
    "JobEvent",
    "MetricPoint",
    "FineTuneJob",
    "Dataset",
    "BaseModel",
]


def move_content_types(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    for model, label in NEW_LABELS.items():
        if not content_type.objects.filter(app_label=label, model=model).exists():
            content_type.objects.filter(app_label="jobs", model=model).update(app_label=label)


def restore_content_types(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    for model, label in NEW_LABELS.items():
        if not content_type.objects.filter(app_label="jobs", model=model).exists():
            content_type.objects.filter(app_label=label, model=model).update(app_label="jobs")


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0005_chatanswer_stopped"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounts", "0001_initial"),
        ("base_models", "0001_initial"),
        ("user_datasets", "0001_initial"),
        ("training", "0001_initial"),
        ("arena", "0001_initial"),
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[], state_operations=[migrations.DeleteModel(name=name) for name in ORDER]
        ),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
