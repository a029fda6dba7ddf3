"""URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from orchestrator.api.endpoints import api as agent_api
from orchestrator.core import views
from orchestrator.metrics_view import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", agent_api.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),  # Prometheus, with a bearer token
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("orchestrator.dashboard.urls")),
]
