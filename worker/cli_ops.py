"""``hatz-worker`` commands for ops (registered by :data:`worker.cli.EXTRA_COMMAND_MODULES`)."""
