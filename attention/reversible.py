"""Placeholder: this algebra is being written (issue 4)."""
