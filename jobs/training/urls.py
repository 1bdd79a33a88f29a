from django.urls import path

from jobs.training import views

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("workers/", views.worker_list, name="worker-list"),
    path("jobs/new/", views.job_new, name="job-new"),
    path("jobs/compare/", views.runs_compare, name="runs-compare"),
    path("jobs/estimate/", views.job_estimate, name="job-estimate"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/events/", views.job_events, name="job-events"),
    path("jobs/<uuid:job_id>/cancel/", views.job_action, {"action": "cancel"}, name="job-cancel"),
    path("jobs/<uuid:job_id>/pause/", views.job_action, {"action": "pause"}, name="job-pause"),
    path("jobs/<uuid:job_id>/resume/", views.job_action, {"action": "resume"}, name="job-resume"),
    path("jobs/<uuid:job_id>/retry/", views.job_action, {"action": "retry"}, name="job-retry"),
    path("jobs/<uuid:job_id>/delete/", views.job_delete, name="job-delete"),
    path("jobs/<uuid:job_id>/download/", views.job_download, name="job-download"),
    path("jobs/<uuid:job_id>/merged/", views.job_merged, name="job-merged"),
    path("jobs/<uuid:job_id>/exports/", views.job_export, name="job-export"),
]
