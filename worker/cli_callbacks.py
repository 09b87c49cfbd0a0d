"""``hatz-worker`` commands for callbacks.

Registered through :data:`worker.cli.EXTRA_COMMAND_MODULES`.
"""
