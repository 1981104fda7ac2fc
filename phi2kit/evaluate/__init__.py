"""Evaluation: ``scoring`` (02's label scoring), ``qa`` (04's and 09's answer checks)."""
