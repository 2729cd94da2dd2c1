from __future__ import annotations

from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    tenant_id = models.CharField(max_length=64, null=True)

    class Meta:
        app_label = "django_app"
