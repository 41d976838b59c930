"""End-to-end pipelines: one readable `__call__` each."""
