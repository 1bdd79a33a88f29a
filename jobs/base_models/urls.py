from django.urls import path

from jobs.base_models import views

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/<uuid:model_id>/delete/", views.model_delete, name="model-delete"),
]
