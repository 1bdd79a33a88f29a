"""OpenAI-compatible routes, mounted at /v1/ (see jobs.openai_api)."""
from django.urls import path

from jobs import openai_api as api

urlpatterns = [
    path("files", api.FileListApi.as_view(), name="openai-files"),
    path("files/<str:file_id>", api.FileDetailApi.as_view(), name="openai-file"),
    path("files/<str:file_id>/content", api.FileContentApi.as_view(), name="openai-file-content"),
    path("fine_tuning/jobs", api.JobListApi.as_view(), name="openai-jobs"),
    path("fine_tuning/jobs/<str:job_id>", api.JobDetailApi.as_view(), name="openai-job"),
    path("fine_tuning/jobs/<str:job_id>/cancel", api.JobCancelApi.as_view(), name="openai-job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/pause", api.JobPauseApi.as_view(), name="openai-job-pause"),
    path("fine_tuning/jobs/<str:job_id>/resume", api.JobResumeApi.as_view(), name="openai-job-resume"),
    path("fine_tuning/jobs/<str:job_id>/events", api.JobEventsApi.as_view(), name="openai-job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", api.JobCheckpointsApi.as_view(), name="openai-job-checkpoints"),
    path("models", api.ModelListApi.as_view(), name="openai-models"),
    path("models/<path:model>", api.ModelDetailApi.as_view(), name="openai-model"),
    path("chat/completions", api.chat_completions, name="openai-chat-completions"),
]
