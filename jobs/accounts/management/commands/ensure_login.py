"""Make sure someone can sign in: create the `demo` user once and say how to sign in.

`make run` (a developer's own machine): a random password, kept in a private file and printed.
`--password-env NAME` (docker-compose.yml): the password is the admin's own, from that variable, and is
never printed or written; with the variable unset or empty no demo user is made.
"""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jobs.common.private_files import private_file_create

PASSWORD_FILE = settings.VAR_DIR / "demo_login.txt"


class Command(BaseCommand):
    help = "Create the demo login if no user exists, and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument(
            "--password-env",
            default="",
            help="take the demo password from this environment variable (none: no demo user); never print it",
        )

    def handle(self, *args, url, password_env, **options):
        User = get_user_model()
        no_user = not User.objects.exists()
        self.stdout.write(f"\n  LoRA Studio: {url}/")
        if password_env:
            password = os.environ.get(password_env, "")
            if password and no_user:
                try:
                    validate_password(password)
                except ValidationError as exc:
                    raise CommandError(f"{password_env}: {' '.join(exc.messages)}") from None
                User.objects.create_user("demo", password=password)
            if password and User.objects.filter(username="demo").exists():
                self.stdout.write(f"  Sign in as: demo (the password in {password_env})")
        else:
            if no_user:
                password = secrets.token_urlsafe(9)
                User.objects.create_user("demo", password=password)
                PASSWORD_FILE.unlink(missing_ok=True)  # left by an earlier database
                private_file_create(PASSWORD_FILE, password)
            if PASSWORD_FILE.exists() and User.objects.filter(username="demo").exists():
                self.stdout.write(f"  Sign in as: demo / {PASSWORD_FILE.read_text().strip()}")
        if settings.ALLOW_SIGNUP:
            self.stdout.write(f"  New account: {url}/accounts/signup/\n")
        else:
            self.stdout.write("  Sign-up is off (ALLOW_SIGNUP): create accounts with manage.py createsuperuser\n")
