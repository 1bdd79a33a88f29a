"""OpenAI-compatible routes, mounted at /v1/."""

from django.urls import path

from jobs.openai_compat import chat, evals, files, fine_tuning, graders, model_catalog

urlpatterns = [
    path("files", files.FileListApi.as_view(), name="openai-files"),
    path("files/<str:file_id>", files.FileDetailApi.as_view(), name="openai-file"),
    path("files/<str:file_id>/content", files.FileContentApi.as_view(), name="openai-file-content"),
    path("fine_tuning/jobs", fine_tuning.JobListApi.as_view(), name="openai-jobs"),
    path("fine_tuning/jobs/<str:job_id>", fine_tuning.JobDetailApi.as_view(), name="openai-job"),
    path("fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.JobCancelApi.as_view(), name="openai-job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/pause", fine_tuning.JobPauseApi.as_view(), name="openai-job-pause"),
    path("fine_tuning/jobs/<str:job_id>/resume", fine_tuning.JobResumeApi.as_view(), name="openai-job-resume"),
    path("fine_tuning/jobs/<str:job_id>/events", fine_tuning.JobEventsApi.as_view(), name="openai-job-events"),
    path(
        "fine_tuning/jobs/<str:job_id>/checkpoints",
        fine_tuning.JobCheckpointsApi.as_view(),
        name="openai-job-checkpoints",
    ),
    path("fine_tuning/alpha/graders/validate", graders.GraderValidateApi.as_view(), name="openai-graders-validate"),
    path("fine_tuning/alpha/graders/run", graders.GraderRunApi.as_view(), name="openai-graders-run"),
    path("evals", evals.EvalListApi.as_view(), name="openai-evals"),
    path("evals/<str:eval_id>", evals.EvalDetailApi.as_view(), name="openai-eval"),
    path("evals/<str:eval_id>/runs", evals.EvalRunListApi.as_view(), name="openai-eval-runs"),
    path("evals/<str:eval_id>/runs/<str:run_id>", evals.EvalRunDetailApi.as_view(), name="openai-eval-run"),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/cancel", evals.EvalRunCancelApi.as_view(), name="openai-eval-run-cancel"
    ),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/output_items",
        evals.EvalOutputItemListApi.as_view(),
        name="openai-eval-output-items",
    ),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/output_items/<str:output_item_id>",
        evals.EvalOutputItemDetailApi.as_view(),
        name="openai-eval-output-item",
    ),
    path("models", model_catalog.ModelListApi.as_view(), name="openai-models"),
    path("models/<path:model>", model_catalog.ModelDetailApi.as_view(), name="openai-model"),
    path("chat/completions", chat.chat_completions, name="openai-chat-completions"),
]
