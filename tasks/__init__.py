"""Celery tasks: thin wrappers that pass run ids and publish what the pipeline returns."""
