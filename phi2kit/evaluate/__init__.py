"""Evaluation: ``scoring`` and ``classification`` (02, 03), ``qa`` (04, 06)."""
