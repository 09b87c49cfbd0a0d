"""``hatz-worker`` commands for batches (registered by :data:`worker.cli.EXTRA_COMMAND_MODULES`)."""
