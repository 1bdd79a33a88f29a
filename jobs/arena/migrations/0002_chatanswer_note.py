from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("arena", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="chatanswer",
            name="note",
            field=models.CharField(
                blank=True, help_text="what was left out to fit the model's context, if anything", max_length=300
            ),
        )
    ]
