"""The Python API for applications: enqueue, follow and cancel runs and batches."""
