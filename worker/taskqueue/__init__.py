"""The Celery app, its configuration from settings, and Celery/kombu plumbing."""
