"""Evaluation: ``classification`` (02, 03) and ``qa`` (04, 06)."""
