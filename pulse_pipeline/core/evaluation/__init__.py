"""Evaluation: metric modules, evaluation sets, inference, comparison, the promotion gate and reports."""
