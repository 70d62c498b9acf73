"""Seeds derived from Lightning's global seed, so that ``seed_everything(s)`` reproduces a study.

Where code runs: wherever a sampler or a buffer is made or renewed (the training process); only
numpy and the environment. ``seed_everything`` sets ``PL_GLOBAL_SEED`` (inherited by DDP ranks it
starts), which is what is read here: no import of Lightning.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

__all__ = ["derived_seed", "global_seed", "seed_of"]


def seed_of(words: list[int]) -> int:
    """A non-negative int seed drawn from ``words`` by numpy's ``SeedSequence``: distinct words
    give independent seeds (a child sampler's seed from its parent's and a tag, for one)."""
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) >> 1


def global_seed() -> int | None:
    """The seed of Lightning's ``seed_everything`` (it sets ``PL_GLOBAL_SEED``), or None."""
    raw = os.environ.get("PL_GLOBAL_SEED")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def derived_seed(*keys: int | str) -> int | None:
    """A non-negative seed derived from :func:`global_seed` and ``keys`` (strings by their
    CRC-32), distinct per keys; None without a global seed. Any process."""
    base = global_seed()
    if base is None:
        return None
    words = [base & 0xFFFFFFFF, base >> 32] + [
        zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys
    ]
    return seed_of(words)
