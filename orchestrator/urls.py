"""URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from orchestrator.api.endpoints import api as agent_api
from orchestrator.core import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", agent_api.urls),
    path("healthz", views.healthz, name="healthz"),
    path("", views.home, name="home"),
]
