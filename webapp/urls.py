from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from jobs import views, views_errors

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Server-sent events (not a DRF view): the job's metric points, then live ones, then its status.
    path("api/v1/jobs/<uuid:job_id>/events/", views.job_events, name="api-job-events"),
    path("api/v1/", include("jobs.api_urls")),
    re_path(r"^api/v1/(?P<rest>.*)$", views_errors.rest_unknown_path),  # JSON 404, not Django's page
    path("v1/", include("jobs.openai_urls")),
    re_path(r"^v1/(?P<rest>.*)$", views_errors.openai_unknown_path),  # OpenAI's unknown_url 404
    path("", include("jobs.urls")),
]

# Requests to the APIs get JSON errors; other pages keep Django's.
handler400 = views_errors.bad_request
handler403 = views_errors.permission_denied
handler404 = views_errors.page_not_found
handler500 = views_errors.server_error
