from django.urls import path

from jobs.tracking import apis

urlpatterns = [
    path("account/tracking/", apis.TrackerSettingsApi.as_view(), name="api-tracking"),
    path("jobs/<uuid:job_id>/tracking/", apis.JobTrackingApi.as_view(), name="api-job-tracking"),
]
