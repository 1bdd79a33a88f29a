"""Register a Hugging Face model folder (safetensors + tokenizer with a chat template), local or in the
object store (s3://BUCKET/PREFIX)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from jobs.base_models.services import base_model_register
from jobs.common.blobs import is_store_url
from jobs.common.exceptions import ProductError
from worker.errors import InputError


class Command(BaseCommand):
    help = "Register a model folder (local, or s3://BUCKET/PREFIX in the object store) as a base model."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("path")

    def handle(self, *args, name, path, **options):
        folder = path.rstrip("/") if is_store_url(path) else Path(path).resolve()
        if not is_store_url(path) and not (folder / "config.json").is_file():
            raise CommandError(f"{folder} has no config.json; give a Hugging Face model folder")
        try:
            model = base_model_register(name=name, path=folder)
        except (InputError, OSError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        except ProductError as exc:  # a config that needs remote code
            raise CommandError(exc.message) from None
        self.stdout.write(
            self.style.SUCCESS(f"registered {model.name}: {model.architecture}, {model.parameters:,} parameters")
        )
