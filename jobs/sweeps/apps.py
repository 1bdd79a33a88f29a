from django.apps import AppConfig


class SweepsConfig(AppConfig):
    """Sweeps: many jobs whose settings Optuna chooses, the promising ones kept and the others pruned."""

    name = "jobs.sweeps"
    label = "sweeps"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.sweeps import receivers  # noqa: F401  (prunes trials as they report; next trial when one ends)
