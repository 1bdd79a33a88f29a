from django.urls import path

from jobs.arena import views

urlpatterns = [
    path("jobs/<uuid:job_id>/compare/", views.job_compare, name="job-compare"),
    path("jobs/<uuid:job_id>/judge/", views.job_judge, name="job-judge"),
    path("jobs/<uuid:job_id>/compare/votes-dataset/", views.votes_dataset, name="votes-dataset"),
    path("chats/<uuid:session_id>/events/", views.chat_events, name="chat-events"),
]
