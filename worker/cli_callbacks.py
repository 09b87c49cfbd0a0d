"""``hatz-worker`` commands for callbacks (registered by :data:`worker.cli.EXTRA_COMMAND_MODULES`)."""
