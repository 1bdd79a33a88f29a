from django.urls import path

from jobs.datasets import apis

urlpatterns = [
    path("datasets/", apis.DatasetListApi.as_view(), name="api-datasets"),
    path("datasets/map/", apis.DatasetMapApi.as_view(), name="api-dataset-map"),
    path("datasets/<uuid:dataset_id>/", apis.DatasetDetailApi.as_view(), name="api-dataset"),
    path("datasets/checks/<uuid:check_id>/", apis.UploadCheckApi.as_view(), name="api-upload-check"),
    path("datasets/<uuid:dataset_id>/tokens/", apis.DatasetTokensApi.as_view(), name="api-dataset-tokens"),
    path("datasets/<uuid:dataset_id>/download/", apis.DatasetDownloadApi.as_view(), name="api-dataset-download"),
    path(
        "datasets/<uuid:dataset_id>/deduplicate/", apis.DatasetDeduplicateApi.as_view(), name="api-dataset-deduplicate"
    ),
]
