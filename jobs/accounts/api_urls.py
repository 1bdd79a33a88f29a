from django.urls import path

from jobs.accounts import apis

urlpatterns = [path("usage/", apis.UsageApi.as_view(), name="api-usage")]
