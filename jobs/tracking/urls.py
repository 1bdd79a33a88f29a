from django.urls import path

from jobs.tracking import views

urlpatterns = [path("account/tracking/", views.tracking_settings, name="tracking-settings")]
