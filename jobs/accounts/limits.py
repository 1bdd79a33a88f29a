"""Per-user limits: the installation's defaults (settings QUOTA_*), overridden per user in the admin,
and the error every interface turns into a 429 naming the limit. Each domain counts its own usage;
figures that span domains (storage) are gathered through the `usage_reported` signal."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import cast

from django.conf import settings
from django.dispatch import Signal

from jobs.accounts.models import ApiKey, Quota
from jobs.common.exceptions import ProductError

# sender=<app label>, user=<User>; receivers return {"storage_bytes": int, ...} for their domain.
usage_reported = Signal()

LABELS = {
    "active_jobs": "queued, running and paused jobs",
    "running_jobs": "jobs training at once",
    "compute_seconds_per_day": "training time per day (seconds)",
    "storage_bytes": "storage (bytes)",
    "api_keys": "API keys",
    "webhooks": "webhooks",
}


class QuotaExceeded(ProductError):
    """A per-user limit is reached: a 429 naming it, with the figure and how to get more."""

    status = 429
    field = "quota"

    def __init__(self, limit: str, *, used: int, allowed: int):
        super().__init__(
            f"limit reached: {LABELS[limit]} — {used:,} used of {allowed:,} allowed "
            f"(setting QUOTA_{limit.upper()}; an administrator can raise it for you)"
        )
        self.limit, self.used, self.allowed = limit, used, allowed

    def body(self) -> dict:
        return {**super().body(), "limit": self.limit, "used": self.used, "allowed": self.allowed}


@dataclass(frozen=True)
class Limits:
    active_jobs: int
    running_jobs: int
    compute_seconds_per_day: int
    storage_bytes: int
    api_keys: int
    webhooks: int


def user_limits(user) -> Limits:
    """The user's limits: their Quota row where set, else the installation's defaults."""
    override = Quota.objects.filter(user_id=user.id).first()
    values = {}
    for f in fields(Limits):
        mine = getattr(override, f.name, None) if override else None
        values[f.name] = mine if mine is not None else getattr(settings, f"QUOTA_{f.name.upper()}")
    return Limits(**values)


def check_limit(user, limit: str, *, used: int, adding: int = 1) -> None:
    """QuotaExceeded if `used + adding` goes past the user's `limit`."""
    allowed = getattr(user_limits(user), limit)
    if used + adding > allowed:
        raise QuotaExceeded(limit, used=used, allowed=allowed)


def reported_usage(user) -> dict[str, int]:
    """Every figure the domains report for the user, summed by name (storage spans several)."""
    used: dict[str, int] = {}
    for _, figures in usage_reported.send(sender="accounts", user=user):
        for name, value in cast("dict[str, int]", figures).items():
            used[name] = used.get(name, 0) + value
    return used


def storage_used(user) -> int:
    """Bytes the user keeps, summed over every domain that stores files for them."""
    return reported_usage(user).get("storage_bytes", 0)


def usage_of(user) -> list[dict]:
    """Each limit with what the user uses of it, for the Usage page and API."""
    used = {**reported_usage(user), "api_keys": ApiKey.objects.filter(owner=user, revoked=False).count()}
    limits = user_limits(user)
    return [
        {"limit": f.name, "label": LABELS[f.name], "used": used.get(f.name, 0), "allowed": getattr(limits, f.name)}
        for f in fields(Limits)
    ]
