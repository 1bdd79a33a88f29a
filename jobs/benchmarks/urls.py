from django.urls import path

from jobs.benchmarks import views

urlpatterns = [
    path("datasets/<uuid:dataset_id>/leaderboard/", views.dataset_leaderboard_page, name="dataset-leaderboard")
]
