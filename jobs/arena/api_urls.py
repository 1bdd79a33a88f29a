from django.urls import path

from jobs.arena import apis, views

urlpatterns = [
    path("jobs/<uuid:job_id>/chat/", apis.JobChatApi.as_view(), name="api-job-chat"),
    # Server-sent events (an async view, not DRF): the answers' pieces as they are generated.
    path("chats/<uuid:session_id>/events/", views.chat_events, name="api-chat-events"),
    path("chats/<uuid:session_id>/stop/", apis.ChatStopApi.as_view(), name="api-chat-stop"),
    path("chat-rounds/<uuid:round_id>/vote/", apis.ChatRoundVoteApi.as_view(), name="api-chat-round-vote"),
    path("win-rates/", apis.WinRateApi.as_view(), name="api-win-rates"),
    path("votes/dataset/", apis.VotesDatasetApi.as_view(), name="api-votes-dataset"),
    path("graders/validate/", apis.GraderValidateApi.as_view(), name="api-graders-validate"),
    path("graders/run/", apis.GraderRunApi.as_view(), name="api-graders-run"),
    path("graders/try/", apis.GraderTryApi.as_view(), name="api-graders-try"),
    path("judgements/", apis.JudgementsApi.as_view(), name="api-judgements"),
    path("judgements/<uuid:judgement_id>/", apis.JudgementApi.as_view(), name="api-judgement"),
    path("judgements/<uuid:judgement_id>/cancel/", apis.JudgementCancelApi.as_view(), name="api-judgement-cancel"),
]
