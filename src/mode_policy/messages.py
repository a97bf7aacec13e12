"""Warnings a user should read: one category, so the command line can print each as one plain line."""

from __future__ import annotations

import warnings


class ModePolicyWarning(UserWarning):
    """Something works but is probably not what the user wants (a too small image, a constant action)."""


def warn(message: str) -> None:
    """Issue ``message`` as a ModePolicyWarning attributed to the caller's caller."""
    warnings.warn(message, ModePolicyWarning, stacklevel=3)
