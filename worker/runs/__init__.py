"""A run's steps as plain functions: submit, poll, finish, cancel; the sweeper, the dispatcher."""
