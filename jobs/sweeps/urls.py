from django.urls import path

from jobs.sweeps import views

urlpatterns = [
    path("sweeps/", views.sweep_list, name="sweep-list"),
    path("sweeps/new/", views.sweep_new, name="sweep-new"),
    path("sweeps/auto/", views.sweep_auto, name="sweep-auto"),
    path("sweeps/<uuid:sweep_id>/", views.sweep_detail, name="sweep-detail"),
    path("sweeps/<uuid:sweep_id>/pause/", views.sweep_action, {"action": "pause"}, name="sweep-pause"),
    path("sweeps/<uuid:sweep_id>/resume/", views.sweep_action, {"action": "resume"}, name="sweep-resume"),
    path("sweeps/<uuid:sweep_id>/cancel/", views.sweep_action, {"action": "cancel"}, name="sweep-cancel"),
    path("sweeps/<uuid:sweep_id>/promote/", views.sweep_action, {"action": "promote"}, name="sweep-promote"),
]
