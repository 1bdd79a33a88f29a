from django.urls import path

from jobs import views
from jobs import views_keys
from jobs import views_webhooks

urlpatterns = [
    path("", views.home, name="home"),
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/demo/", views.dataset_demo, name="dataset-demo"),
    path("datasets/map/", views.dataset_map, name="dataset-map"),
    path("datasets/<uuid:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<uuid:dataset_id>/rename/", views.dataset_rename, name="dataset-rename"),
    path("datasets/<uuid:dataset_id>/delete/", views.dataset_delete, name="dataset-delete"),
    path("datasets/<uuid:dataset_id>/download/", views.dataset_download, name="dataset-download"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_new, name="job-new"),
    path("jobs/compare/", views.runs_compare, name="runs-compare"),
    path("jobs/estimate/", views.job_estimate, name="job-estimate"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/events/", views.job_events, name="job-events"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/pause/", views.job_action, {"action": "pause"}, name="job-pause"),
    path("jobs/<uuid:job_id>/resume/", views.job_action, {"action": "resume"}, name="job-resume"),
    path("jobs/<uuid:job_id>/retry/", views.job_action, {"action": "retry"}, name="job-retry"),
    path("jobs/<uuid:job_id>/download/", views.job_download, name="job-download"),
    path("jobs/<uuid:job_id>/merged/", views.job_merged, name="job-merged"),
    path("jobs/<uuid:job_id>/compare/", views.job_compare, name="job-compare"),
    path("jobs/<uuid:job_id>/compare/ask/", views.job_compare_ask, name="job-compare-ask"),
    path("chats/<uuid:session_id>/events/", views.chat_events, name="chat-events"),
    path("chats/<uuid:session_id>/stop/", views.chat_stop, name="chat-stop"),
    path("chats/rounds/<uuid:round_id>/vote/", views.chat_round_vote, name="chat-round-vote"),
    path("account/keys/", views_keys.key_list, name="key-list"),
    path("account/keys/<int:key_id>/revoke/", views_keys.key_revoke, name="key-revoke"),
    path("account/webhooks/", views_webhooks.webhook_list, name="webhook-list"),
    path("account/webhooks/<int:webhook_id>/delete/", views_webhooks.webhook_remove, name="webhook-delete"),
]
