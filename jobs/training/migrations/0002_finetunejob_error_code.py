"""A failure's kind as a code (out_of_memory, ...), so pages stop recognising it by its message;
existing out-of-memory failures get theirs."""

from django.db import migrations, models


OOM_MESSAGE_START = "Out of memory. Try"  # how every out-of-memory failure's message has begun


def code_old_oom_failures(apps, schema_editor):
    job = apps.get_model("training", "FineTuneJob")
    job.objects.filter(status="failed", error__startswith=OOM_MESSAGE_START).update(error_code="out_of_memory")


class Migration(migrations.Migration):
    dependencies = [("training", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="finetunejob",
            name="error_code",
            field=models.CharField(
                blank=True,
                help_text="what kind of failure: out_of_memory, training_error, dataset_error, ...",
                max_length=40,
            ),
        ),
        migrations.RunPython(code_old_oom_failures, migrations.RunPython.noop),
    ]
