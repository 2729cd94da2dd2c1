from __future__ import annotations

from django.urls import path

from tests.django_app import views

urlpatterns = [
    path("notes/", views.write),
    path("notes/twice/", views.write_twice),
    path("notes/fail/", views.write_then_fail),
    path("notes/fail-request/", views.write_in_request_then_fail),
    path("login/", views.sign_in),
    path("logout/", views.sign_out),
]
