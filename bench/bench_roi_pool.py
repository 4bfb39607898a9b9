"""roi_pool benchmark cases (stub)."""
from __future__ import annotations


def cases(device, quick):
    return []
