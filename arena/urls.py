from django.urls import path

from arena import views

urlpatterns = [
    path("jobs/<uuid:job_id>/compare/", views.job_compare, name="job-compare"),
    path("chats/<uuid:session_id>/events/", views.chat_events, name="chat-events"),
]
