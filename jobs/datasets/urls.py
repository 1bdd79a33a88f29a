from django.urls import path

from jobs.datasets import views

urlpatterns = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/demo/", views.dataset_demo, name="dataset-demo"),
    path("datasets/map/", views.dataset_map, name="dataset-map"),
    path("datasets/<uuid:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<uuid:dataset_id>/rename/", views.dataset_rename, name="dataset-rename"),
    path("datasets/<uuid:dataset_id>/delete/", views.dataset_delete, name="dataset-delete"),
    path("datasets/<uuid:dataset_id>/download/", views.dataset_download, name="dataset-download"),
    path("datasets/<uuid:dataset_id>/deduplicate/", views.dataset_deduplicate, name="dataset-deduplicate"),
    path("datasets/<uuid:dataset_id>/tokens/", views.dataset_tokens_status, name="dataset-tokens"),
    path("datasets/checks/<uuid:check_id>/", views.upload_check, name="upload-check"),
    path("datasets/checks/<uuid:check_id>/status/", views.upload_check_status, name="upload-check-status"),
]
