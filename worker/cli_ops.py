"""``hatz-worker`` commands for ops.

Registered through :data:`worker.cli.EXTRA_COMMAND_MODULES`.
"""
