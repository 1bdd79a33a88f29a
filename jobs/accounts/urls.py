from django.contrib.auth import views as auth_views
from django.urls import path

from jobs.accounts import views

urlpatterns = [
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path("account/usage/", views.usage, name="usage"),
    path("account/keys/", views.key_list, name="key-list"),
    path("account/keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
]
