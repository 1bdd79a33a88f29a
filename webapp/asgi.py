import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after the app is set up)

from jobs.common.request_limit import RequestBodyLimit  # noqa: E402

# Every request body is capped here, before Django reads it and before anyone is authenticated; one without
# a session cookie or API key far lower.
application = RequestBodyLimit(
    django_application,
    max_bytes=lambda: settings.MAX_REQUEST_BYTES,
    anonymous=lambda: (settings.MAX_ANONYMOUS_REQUEST_BYTES, settings.SESSION_COOKIE_NAME),
)
