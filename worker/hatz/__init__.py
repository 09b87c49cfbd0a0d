"""The Hatz API client: the only code that knows Hatz URLs, headers and status codes.

It imports nothing of Celery, kombu or Redis."""
