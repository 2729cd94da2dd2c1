"""A small Django app for tests/test_integration_django.py: notes written through real requests."""
