"""Account pages: sign-in (with django-axes' lockout), sign-up, and the API keys page (list, create,
shown once, revoke)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs.accounts import selectors
from jobs.accounts.forms import SignupForm
from jobs.accounts.limits import QuotaExceeded, usage_of
from jobs.accounts.services import api_key_create, api_key_revoke
from jobs.common.human_units import duration_words, size_words


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"

    def get_context_data(self, **kwargs):
        return super().get_context_data(allow_signup=settings.ALLOW_SIGNUP, **kwargs)


def lockout_minutes() -> int:
    """The lockout's length in whole minutes, for messages."""
    return max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))


def login_locked_out(request, original_response=None, credentials=None):
    """django-axes' answer once a username is locked out from this address: the sign-in page saying so."""
    # Unbound: binding would check the credentials again, and the lockout is the only news.
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
    return render(
        request,
        "accounts/login.html",
        {
            "form": form,
            "allow_signup": settings.ALLOW_SIGNUP,
            "next": request.POST.get("next", ""),
            "locked_out_minutes": lockout_minutes(),
        },
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )


def signup(request):
    """Create an account and sign in; a 404 where the server turned sign-up off (ALLOW_SIGNUP)."""
    if not settings.ALLOW_SIGNUP:
        return render(request, "accounts/signup.html", {"signup_closed": True}, status=404)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("dataset-list")
    return render(request, "accounts/signup.html", {"form": form})


def _keys_page(request, *, new_key: str | None = None, status: int = 200):
    return render(
        request,
        "accounts/keys.html",
        {
            "keys": selectors.api_key_list(owner=request.user),
            "new_key": new_key,
            "base_url": request.build_absolute_uri("/v1"),
        },
        status=status,
    )


NEW_KEY_SESSION = "new_api_key"


@login_required
def key_list(request):
    """GET: the keys. POST: create one and show it, this one time only."""
    if request.method != "POST":
        # The key made by the POST just before (post/redirect/get: reloading the page makes no second key).
        new_key = request.session.pop(NEW_KEY_SESSION, None)
        response = _keys_page(request, new_key=new_key)
        if new_key:
            response["Cache-Control"] = "no-store"
        return response
    name = request.POST.get("name", "").strip()
    if len(name) > 100:
        messages.error(request, "The name must be at most 100 characters.")
        return _keys_page(request, status=400)
    try:
        _, raw = api_key_create(owner=request.user, name=name)
    except QuotaExceeded as exc:
        messages.error(request, exc.message)
        return _keys_page(request, status=429)
    request.session[NEW_KEY_SESSION] = raw  # server-side, until the page after the redirect shows it once
    return redirect("key-list")


@login_required
@require_POST
def key_revoke(request, key_id):
    key = selectors.api_key_get(owner=request.user, key_id=key_id)
    api_key_revoke(key=key, by=request.user)
    messages.success(request, f"Revoked {key.name or 'the key'} ({key.prefix}...).")
    return redirect("key-list")


@login_required
def usage(request):
    """The user's figures against their limits, in human units with a bar (the API keeps the raw figures)."""
    return render(request, "accounts/usage.html", {"rows": [usage_for_people(row) for row in usage_of(request.user)]})


# The limits counted in a unit: how the page names them and writes their figures.
USAGE_UNITS = {
    "storage_bytes": ("storage", size_words, ""),
    "compute_seconds_per_day": ("training time", duration_words, " today"),
}


def usage_for_people(row: dict) -> dict:
    """A usage row with `text` ("13.9 MB of 20 GB", "1 min 18 s of 12 h today", "2 of 5") and `percent` for its bar."""
    label, words, tail = USAGE_UNITS.get(row["limit"], (row["label"], str, ""))
    used, allowed = row["used"], row["allowed"]
    percent = min(100, round(100 * used / allowed)) if allowed > 0 else 100
    return {**row, "label": label, "text": f"{words(used)} of {words(allowed)}{tail}", "percent": percent}
