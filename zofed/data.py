"""Client data splits: iid, and Dirichlet label skew in both conventions found in the literature.

- "per-class" (Hsu et al. 2019; the FedMeZO and ZOWarmUp setups): for each class c draw shares
  q_c ~ Dir(beta * 1_K) over the K clients and deal class c's examples out by q_c. Client sizes vary.
- "per-client" (a mixture per client): for each client k draw a class mixture pi_k ~ Dir(beta * 1_C)
  and fill the client's equal share of examples by drawing classes from pi_k (renormalized over the
  classes that still have examples). Client sizes are equal.

Both retry with the next seed (at most `retries` times) until every client has at least `min_size`
examples and every example (hence every class) is assigned; then they raise naming the problem.
Splits use numpy's generator seeded explicitly: data placement is not part of the noise contract.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CONVENTIONS = ("per-class", "per-client")


def _check(labels: Sequence[int], clients: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be a non-empty sequence of non-negative integers")
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= y.size:
        raise ValueError(f"clients must be an integer in [1, {y.size}] (the number of examples), got {clients!r}")
    return y


def iid_split(labels: Sequence[int], clients: int, seed: int = 0) -> list[list[int]]:
    """A shuffled, near-equal split of example indices."""
    y = _check(labels, clients)
    order = np.random.default_rng(seed).permutation(y.size)
    return [sorted(part.tolist()) for part in np.array_split(order, clients)]


def dirichlet_split(labels: Sequence[int], clients: int, beta: float, *, convention: str = "per-class",
                    seed: int = 0, min_size: int = 1, retries: int = 100) -> list[list[int]]:
    """Example indices per client with Dirichlet(beta) label skew (smaller beta: more skew)."""
    y = _check(labels, clients)
    if not beta > 0 or not np.isfinite(beta):
        raise ValueError(f"the Dirichlet concentration beta must be a positive finite number, got {beta}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if min_size * clients > y.size:
        raise ValueError(f"{clients} clients with at least {min_size} examples each need more than {y.size}")
    draw = _per_class if convention == "per-class" else _per_client
    for attempt in range(retries):
        parts = draw(y, clients, beta, np.random.default_rng([seed, attempt]))
        if min(len(p) for p in parts) >= min_size and sum(len(p) for p in parts) == y.size:
            return [sorted(p) for p in parts]
    raise RuntimeError(f"no {convention} Dirichlet(beta={beta}) split gave every one of {clients} clients at least "
                       f"{min_size} examples in {retries} tries; raise beta, lower min_size or use fewer clients")


def _per_class(y, clients, beta, rng) -> list[list[int]]:
    parts: list[list[int]] = [[] for _ in range(clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet([beta] * clients))[:-1] * idx.size).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    return parts


def _per_client(y, clients, beta, rng) -> list[list[int]]:
    classes = np.unique(y)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in classes]
    sizes = [len(part) for part in np.array_split(np.arange(y.size), clients)]
    parts: list[list[int]] = []
    for k in range(clients):
        mix = rng.dirichlet([beta] * classes.size)
        part: list[int] = []
        for _ in range(sizes[k]):
            left = np.array([len(p) > 0 for p in pools], dtype=float) * mix
            if left.sum() <= 0:  # this client's classes are used up: take from what remains, uniformly
                left = np.array([len(p) > 0 for p in pools], dtype=float)
            part.append(int(pools[rng.choice(classes.size, p=left / left.sum())].pop()))
        parts.append(part)
    return parts
