from django.urls import path

from jobs import apis

urlpatterns = [
    path("datasets/", apis.DatasetListApi.as_view(), name="api-datasets"),
    path("datasets/map/", apis.DatasetMapApi.as_view(), name="api-dataset-map"),
    path("datasets/<uuid:dataset_id>/", apis.DatasetDetailApi.as_view(), name="api-dataset"),
    path("datasets/<uuid:dataset_id>/download/", apis.DatasetDownloadApi.as_view(), name="api-dataset-download"),
    path("base-models/", apis.BaseModelListApi.as_view(), name="api-base-models"),
    path("jobs/", apis.JobListApi.as_view(), name="api-jobs"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="api-job"),
    path("jobs/<uuid:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
    path("jobs/<uuid:job_id>/pause/", apis.JobPauseApi.as_view(), name="api-job-pause"),
    path("jobs/<uuid:job_id>/resume/", apis.JobResumeApi.as_view(), name="api-job-resume"),
    path("jobs/<uuid:job_id>/retry/", apis.JobRetryApi.as_view(), name="api-job-retry"),
    path("jobs/<uuid:job_id>/metrics/", apis.JobMetricsApi.as_view(), name="api-job-metrics"),
    path("jobs/<uuid:job_id>/adapter/", apis.JobAdapterApi.as_view(), name="api-job-adapter"),
    path("jobs/<uuid:job_id>/merged/", apis.JobMergedApi.as_view(), name="api-job-merged"),
    path("jobs/<uuid:job_id>/chat/", apis.JobChatApi.as_view(), name="api-job-chat"),
    path("adapters/", apis.AdapterListApi.as_view(), name="api-adapters"),
    path("estimate/", apis.EstimateApi.as_view(), name="api-estimate"),
]
