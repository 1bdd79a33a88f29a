"""Root URLs: each app's pages, its /api/v1/ routes, the OpenAI-compatible /v1/, and JSON errors
for the APIs."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from jobs.common import errors
from jobs.common.schema import ApiDocsView

api_v1 = [
    path("", include("jobs.accounts.api_urls")),
    path("", include("jobs.datasets.api_urls")),
    path("", include("jobs.base_models.api_urls")),
    path("", include("jobs.training.api_urls")),
    path("", include("jobs.arena.api_urls")),
    path("", include("jobs.webhooks.api_urls")),
    path("", include("jobs.tracking.api_urls")),
    path("", include("jobs.sweeps.api_urls")),
    path("", include("jobs.benchmarks.api_urls")),
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="job-list"), name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("app/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include(api_v1)),
    re_path(r"^api/v1/(?P<rest>.*)$", errors.rest_unknown_path),  # JSON 404, not Django's page
    path("v1/", include("jobs.openai_compat.urls")),
    re_path(r"^v1/(?P<rest>.*)$", errors.openai_unknown_path),  # OpenAI's unknown_url 404
    path("", include("jobs.accounts.urls")),
    path("", include("jobs.datasets.urls")),
    path("", include("jobs.base_models.urls")),
    path("", include("jobs.training.urls")),
    path("", include("jobs.arena.urls")),
    path("", include("jobs.webhooks.urls")),
    path("", include("jobs.tracking.urls")),
    path("", include("jobs.sweeps.urls")),
    path("", include("jobs.benchmarks.urls")),
]

# Requests to the APIs get JSON errors; other pages keep Django's.
handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.page_not_found
handler500 = errors.server_error
