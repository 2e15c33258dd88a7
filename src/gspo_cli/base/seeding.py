"""Seeds derived from the run seed: every random choice is a pure function of its inputs.

Sampling uses one seed per completion, `derive(seed, "sample", step, row)` with the row's
index in the whole (global) rollout batch, and the minibatch order uses
`derive(seed, "minibatches", step, epoch)`. Nothing depends on how many processes share the
work or on what ran before, so one process and N processes draw the same samples, and a
resumed run draws what an uninterrupted one would have.

Standard library only.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch.Generator.manual_seed takes any non-negative int64


def derive(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed from the run seed, a purpose and indices (blake2b, stable across runs).

    >>> derive(0, "sample", 1, 2) == derive(0, "sample", 1, 2)
    True
    >>> derive(0, "sample", 1, 2) != derive(0, "sample", 2, 1)
    True
    """
    text = ":".join([str(seed), purpose, *(str(i) for i in indices)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
