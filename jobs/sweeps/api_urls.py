from django.urls import path

from jobs.sweeps import apis

urlpatterns = [
    path("sweeps/", apis.SweepListApi.as_view(), name="api-sweeps"),
    path("sweeps/<uuid:sweep_id>/", apis.SweepDetailApi.as_view(), name="api-sweep"),
    path("sweeps/<uuid:sweep_id>/pause/", apis.SweepPauseApi.as_view(), name="api-sweep-pause"),
    path("sweeps/<uuid:sweep_id>/resume/", apis.SweepResumeApi.as_view(), name="api-sweep-resume"),
    path("sweeps/<uuid:sweep_id>/cancel/", apis.SweepCancelApi.as_view(), name="api-sweep-cancel"),
    path("sweeps/<uuid:sweep_id>/promote/", apis.SweepPromoteApi.as_view(), name="api-sweep-promote"),
]
