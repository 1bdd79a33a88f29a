"""The merged exports' state moves from files into MergedExport rows: a stored `merged-<id>.zip` becomes a ready
row with its size, a `merge.pending` marker (JSON {"attempts", "running"}, or empty from older releases) a
queued row whose lease has run out, so the sweep sends it again at once; the marker is then removed."""

import datetime as dt
import json

from django.db import migrations
from django.utils import timezone

MARKER = "merge.pending"


def _marker_attempts(text: str) -> int:
    try:
        data = json.loads(text) if text.strip() else {}
        return int(data.get("attempts", 0)) if isinstance(data, dict) else 0
    except (ValueError, TypeError):
        return 0


def markers_to_rows(apps, schema_editor):
    from jobs.common import blobs

    job_model = apps.get_model("training", "FineTuneJob")
    export_model = apps.get_model("training", "MergedExport")
    for job in job_model.objects.filter(status="succeeded").only("id"):
        folder = f"jobs/{job.id}"
        zip_name = f"{folder}/merged-{str(job.id)[:8]}.zip"
        size = blobs.size(zip_name)
        if size is not None:  # made when the zip was last written: it expires MERGED_EXPORT_DAYS after that
            made = timezone.now() - dt.timedelta(seconds=blobs.age(zip_name) or 0)
            export_model.objects.get_or_create(
                job_id=job.id, defaults={"status": "ready", "size_bytes": size, "finished": made}
            )
        else:
            text = blobs.read_text(f"{folder}/{MARKER}")
            if text is not None:
                export_model.objects.get_or_create(
                    job_id=job.id,
                    defaults={"status": "queued", "attempts": _marker_attempts(text), "lease_until": timezone.now()},
                )
    for marker in blobs.find("jobs", MARKER):
        blobs.delete(marker)


class Migration(migrations.Migration):
    dependencies = [("training", "0007_merged_export")]

    operations = [migrations.RunPython(markers_to_rows, migrations.RunPython.noop)]
