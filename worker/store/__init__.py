"""The run store in Redis: every key (keys), each run's record (ledger), and the outbox.

It speaks no HTTP."""
