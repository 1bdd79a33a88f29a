from django.urls import path

from accounts import apis

urlpatterns = [
    path("usage/", apis.UsageApi.as_view(), name="api-usage"),
]
