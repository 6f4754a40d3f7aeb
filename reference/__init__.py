"""Placeholder: the NumPy reference is being written (issue 2)."""
