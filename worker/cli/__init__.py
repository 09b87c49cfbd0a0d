"""The ``hatz-worker`` command line."""
