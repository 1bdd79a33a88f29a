from django.urls import path

from jobs import apis, apis_webhooks

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
    path("chats/<uuid:session_id>/stop/", apis.ChatStopApi.as_view(), name="api-chat-stop"),
    path("chat-rounds/<uuid:round_id>/vote/", apis.ChatRoundVoteApi.as_view(), name="api-chat-round-vote"),
    path("win-rates/", apis.WinRateApi.as_view(), name="api-win-rates"),
    path("adapters/", apis.AdapterListApi.as_view(), name="api-adapters"),
    path("estimate/", apis.EstimateApi.as_view(), name="api-estimate"),
    path("webhooks/", apis_webhooks.WebhookListApi.as_view(), name="api-webhooks"),
    path("webhooks/<int:webhook_id>/", apis_webhooks.WebhookDetailApi.as_view(), name="api-webhook"),
    path("webhooks/<int:webhook_id>/deliveries/", apis_webhooks.WebhookDeliveryListApi.as_view(),
         name="api-webhook-deliveries"),
    path("webhooks/<int:webhook_id>/test/", apis_webhooks.WebhookTestApi.as_view(), name="api-webhook-test"),
    path("webhooks/<int:webhook_id>/rotate-secret/", apis_webhooks.WebhookSecretRotateApi.as_view(),
         name="api-webhook-rotate-secret"),
]
