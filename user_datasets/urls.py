from django.urls import path

from user_datasets import views

urlpatterns = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/demo/", views.dataset_demo, name="dataset-demo"),
    path("datasets/map/", views.dataset_map, name="dataset-map"),
    path("datasets/<uuid:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<uuid:dataset_id>/rename/", views.dataset_rename, name="dataset-rename"),
    path("datasets/<uuid:dataset_id>/delete/", views.dataset_delete, name="dataset-delete"),
    path("datasets/<uuid:dataset_id>/download/", views.dataset_download, name="dataset-download"),
]
