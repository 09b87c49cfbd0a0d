"""The HTTP API (``hatz-worker serve``): a FastAPI app over the Python API in ``worker.api``.

:func:`worker.http_api.app.create_app` builds it; see ``docs/http-api.md``.
"""
