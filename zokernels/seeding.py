"""Seed derivation by pure integer hashing (splitmix64), so seeds never touch torch's RNG and every
party that knows (run seed, step, index) derives the same 64-bit seed."""

from __future__ import annotations

_M64 = 2**64 - 1


def splitmix64(x: int) -> int:
    """One step of splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from a sequence of non-negative integers, e.g. (run_seed, step, perturbation)."""
    h = 0
    for p in parts:
        if p < 0:
            raise ValueError(f"seed parts must be non-negative, got {p}")
        h = splitmix64(h ^ (p & _M64))
    return h
