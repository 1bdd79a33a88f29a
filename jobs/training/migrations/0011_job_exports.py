"""Merged exports become one format of a job's exports (GGUF LoRA and merged GGUF join them): the MergedExport
table is renamed JobExport with its rows, each an export of format "merged", and a job may hold one export per
format and quantization."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("training", "0010_finetunejob_grader")]

    operations = [
        migrations.RenameModel("MergedExport", "JobExport"),
        migrations.AlterField(
            model_name="jobexport",
            name="job",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="exports", to="training.finetunejob"
            ),
        ),
        migrations.AddField(
            model_name="jobexport",
            name="format",
            field=models.CharField(
                choices=[("merged", "Merged"), ("gguf-lora", "Gguf Lora"), ("gguf-merged", "Gguf Merged")],
                default="merged",
                max_length=12,
            ),
        ),
        migrations.AddField(
            model_name="jobexport",
            name="quantization",
            field=models.CharField(blank=True, help_text="gguf-merged: f16, bf16, q8_0 or q4_k_m", max_length=8),
        ),
        migrations.AddField(
            model_name="jobexport",
            name="stage",
            field=models.CharField(blank=True, help_text="what a running export is doing, in words", max_length=60),
        ),
        migrations.AddField(
            model_name="jobexport",
            name="progress",
            field=models.FloatField(default=0.0, help_text="0 to 1 while running"),
        ),
        migrations.AlterField(
            model_name="jobexport",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0, help_text="runs started, and messages lost"),
        ),
        migrations.AlterField(
            model_name="jobexport",
            name="claim",
            field=models.CharField(blank=True, help_text="the token of the export run that holds it", max_length=32),
        ),
        migrations.AddConstraint(
            model_name="jobexport",
            constraint=models.UniqueConstraint(
                fields=("job", "format", "quantization"), name="job_export_unique_per_format"
            ),
        ),
    ]
