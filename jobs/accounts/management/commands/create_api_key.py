"""Create an API key for a user; the last line of output is the key (shown only this once)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.accounts.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME. The key is printed once, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        key, raw = api_key_create(owner=user, name=name or "cli")
        self.stdout.write(f"created API key {key.prefix}... for {user.username}; store it now, it is not shown again")
        self.stdout.write(raw)
