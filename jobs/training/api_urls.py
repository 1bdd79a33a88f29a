from django.urls import path

from jobs.training import apis, export_apis, publish_apis, views

urlpatterns = [
    path("jobs/", apis.JobListApi.as_view(), name="api-jobs"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="api-job"),
    # Server-sent events (an async view, not DRF): the job's metric points, then live ones, then its status.
    path("jobs/<uuid:job_id>/events/", views.job_events, name="api-job-events"),
    path("jobs/<uuid:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
    path("jobs/<uuid:job_id>/pause/", apis.JobPauseApi.as_view(), name="api-job-pause"),
    path("jobs/<uuid:job_id>/resume/", apis.JobResumeApi.as_view(), name="api-job-resume"),
    path("jobs/<uuid:job_id>/retry/", apis.JobRetryApi.as_view(), name="api-job-retry"),
    path("jobs/<uuid:job_id>/metrics/", apis.JobMetricsApi.as_view(), name="api-job-metrics"),
    path("jobs/<uuid:job_id>/adapter/", apis.JobAdapterApi.as_view(), name="api-job-adapter"),
    path("jobs/<uuid:job_id>/merged/", export_apis.JobMergedApi.as_view(), name="api-job-merged"),
    path("jobs/<uuid:job_id>/publish/", publish_apis.JobPublishApi.as_view(), name="api-job-publish"),
    path("jobs/<uuid:job_id>/exports/", export_apis.JobExportListApi.as_view(), name="api-job-exports"),
    path("jobs/<uuid:job_id>/exports/<int:export_id>/", export_apis.JobExportApi.as_view(), name="api-job-export"),
    path(
        "jobs/<uuid:job_id>/exports/<int:export_id>/download/",
        export_apis.JobExportDownloadApi.as_view(),
        name="api-job-export-download",
    ),
    path("adapters/", apis.AdapterListApi.as_view(), name="api-adapters"),
    path("estimate/", apis.EstimateApi.as_view(), name="api-estimate"),
    path("workers/", apis.WorkersApi.as_view(), name="api-workers"),
]
