"""File inputs from anywhere and the output archive.

* :mod:`worker.files.refs`: what a file input names (path, ``https://``, object
  store) and the checks of its form;
* :mod:`worker.files.https`: ``https://`` inputs through the callbacks' SSRF guard;
* :mod:`worker.files.store`: object stores through fsspec;
* :mod:`worker.files.sources`: uploading any of them through the Hatz client;
* :mod:`worker.files.archive`: copying a run's documents to ``HATZ_ARCHIVE_URL``.

No Redis and no Celery here: the run steps (:mod:`worker.runs`) call these.
"""
