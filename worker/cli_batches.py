"""``hatz-worker`` commands for batches.

Registered through :data:`worker.cli.EXTRA_COMMAND_MODULES`.
"""
