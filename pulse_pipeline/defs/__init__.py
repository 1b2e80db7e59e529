"""Thin Dagster wrappers over `pulse_pipeline.core`, one folder per domain."""
