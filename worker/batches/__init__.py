"""Batches and schedules: one app, many input rows, at most max_in_flight runs at once."""
