"""Evaluation: the eval report and the promotion gate."""
