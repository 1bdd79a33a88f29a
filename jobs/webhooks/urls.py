from django.urls import path

from jobs.webhooks import views

urlpatterns = [
    path("account/webhooks/", views.webhook_list, name="webhook-list"),
    path("account/webhooks/<int:webhook_id>/rotate-secret/", views.webhook_rotate_secret, name="webhook-rotate-secret"),
    path("account/webhooks/<int:webhook_id>/delete/", views.webhook_remove, name="webhook-delete"),
    path("account/webhooks/<int:webhook_id>/test/", views.webhook_test, name="webhook-test"),
]
