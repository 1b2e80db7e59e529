"""Dagster-free domain logic: every module here is plain Python, tested directly."""
