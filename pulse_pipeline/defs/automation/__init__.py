"""Automation: sensors and schedules that start the retrain jobs."""
