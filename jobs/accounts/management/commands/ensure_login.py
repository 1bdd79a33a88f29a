"""Make sure someone can sign in: create the `demo` user once and say how to sign in."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from jobs.common.private_files import private_file_create

PASSWORD_FILE = settings.VAR_DIR / "demo_login.txt"


class Command(BaseCommand):
    help = "Create the demo login if no user exists, and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args, url, **options):
        User = get_user_model()
        if not User.objects.filter(username="demo").exists() and not User.objects.exists():
            password = secrets.token_urlsafe(9)
            User.objects.create_user("demo", password=password)
            PASSWORD_FILE.unlink(missing_ok=True)  # left by an earlier database
            private_file_create(PASSWORD_FILE, password)
        self.stdout.write(f"\n  LoRA Studio: {url}/")
        if PASSWORD_FILE.exists() and User.objects.filter(username="demo").exists():
            self.stdout.write(f"  Sign in as: demo / {PASSWORD_FILE.read_text().strip()}")
        if settings.ALLOW_SIGNUP:
            self.stdout.write(f"  New account: {url}/accounts/signup/\n")
        else:
            self.stdout.write("  Sign-up is off (ALLOW_SIGNUP): create accounts with manage.py createsuperuser\n")
