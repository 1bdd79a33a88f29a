from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0004_chat_rounds_and_votes")]

    operations = [
        migrations.AddField(
            model_name="chatanswer",
            name="stopped",
            field=models.BooleanField(
                default=False, help_text="ended early by the stop button; text is what came before"
            ),
        )
    ]
