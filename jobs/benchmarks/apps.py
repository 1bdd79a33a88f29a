from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    """Benchmark runs of a job's adapter (or of a base model alone), made on the background worker."""

    name = "jobs.benchmarks"
    label = "benchmarks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.benchmarks import receivers  # noqa: F401  (benchmarks a finished job when the server says so)
