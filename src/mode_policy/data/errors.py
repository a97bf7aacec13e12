"""The one error type for unreadable or inconsistent datasets."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk is missing a file or field, or its contents disagree with its metadata.

    Messages name the file and the field at fault and say how to fix it.
    """
