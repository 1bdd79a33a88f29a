"""Claims (a token per worker run) fence a job's writes; crashes are recorded apart from attempts."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("training", "0002_finetunejob_error_code")]

    operations = [
        migrations.AddField(
            model_name="finetunejob",
            name="claim",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="the token of the worker run that owns the job; its writes are fenced by it",
                max_length=32,
            ),
        ),
        migrations.AddField(
            model_name="finetunejob",
            name="crashes",
            field=models.JSONField(
                blank=True, default=list, help_text="when a worker died holding the job (ISO times)"
            ),
        ),
        migrations.AlterField(
            model_name="finetunejob",
            name="attempts",
            field=models.PositiveIntegerField(default=0, help_text="1 + the crashes; pauses and resumes do not count"),
        ),
        migrations.AlterField(
            model_name="finetunejob",
            name="lease_until",
            field=models.DateTimeField(blank=True, help_text="on the database's clock", null=True),
        ),
    ]
