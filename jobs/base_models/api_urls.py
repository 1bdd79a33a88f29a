from django.urls import path

from jobs.base_models import apis

urlpatterns = [
    path("base-models/", apis.BaseModelListApi.as_view(), name="api-base-models"),
    path("base-models/<str:model_id>/", apis.BaseModelDetailApi.as_view(), name="api-base-model"),
]
