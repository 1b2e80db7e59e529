"""Adapter training: a runnable recipe (setup -> train -> validate -> save), no Dagster inside."""
