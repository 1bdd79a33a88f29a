from django.urls import path

from jobs.webhooks import apis

urlpatterns = [
    path("webhooks/", apis.WebhookListApi.as_view(), name="api-webhooks"),
    path("webhooks/<int:webhook_id>/", apis.WebhookDetailApi.as_view(), name="api-webhook"),
    path("webhooks/<int:webhook_id>/deliveries/", apis.WebhookDeliveryListApi.as_view(), name="api-webhook-deliveries"),
    path("webhooks/<int:webhook_id>/test/", apis.WebhookTestApi.as_view(), name="api-webhook-test"),
    path(
        "webhooks/<int:webhook_id>/rotate-secret/",
        apis.WebhookSecretRotateApi.as_view(),
        name="api-webhook-rotate-secret",
    ),
]
