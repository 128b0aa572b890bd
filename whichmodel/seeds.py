"""One seed per unit of work, derived from what identifies it.

Every trial seeds its random number generators from the sweep's seed and what the work is (the
model, the task, the learning rate, the repetition): the same sweep file and seed give the same
numbers whatever order, node or trial grouping runs the work, and two repetitions of one
fine-tune differ in everything random (data order, head initialisation, augmentation).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts`` (their ``repr``: ``derive_seed(0, "m", "t", 0.01, 1)``)."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
