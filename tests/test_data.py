"""Client splits: every example assigned once, both Dirichlet conventions skew as beta says, clear errors."""

import numpy as np
import pytest

from zofed.data import dirichlet_split, iid_split

LABELS = [i % 4 for i in range(400)] + [4] * 20  # five classes, one rare


def _skew(parts, labels=LABELS):
    """Mean over clients of the largest class share: 1/C-ish for iid, 1 for one class per client."""
    y = np.asarray(labels)
    return float(np.mean([np.bincount(y[p], minlength=5).max() / len(p) for p in parts]))


@pytest.mark.parametrize("convention", ["per-class", "per-client"])
def test_partition_is_exact_and_deterministic(convention):
    parts = dirichlet_split(LABELS, 7, 0.5, convention=convention, seed=3)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(LABELS)))  # every example (hence every class) exactly once
    assert all(len(p) >= 1 for p in parts)
    assert parts == dirichlet_split(LABELS, 7, 0.5, convention=convention, seed=3)
    assert parts != dirichlet_split(LABELS, 7, 0.5, convention=convention, seed=4)


@pytest.mark.parametrize("convention", ["per-class", "per-client"])
def test_smaller_beta_means_more_skew(convention):
    skews = {beta: np.mean([_skew(dirichlet_split(LABELS, 8, beta, convention=convention, seed=s)) for s in range(5)])
             for beta in (0.1, 1.0, 100.0)}
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[100.0] < 0.4  # near the class frequencies (0.24)
    assert skews[0.1] > 0.6


def test_per_client_convention_has_equal_sizes():
    parts = dirichlet_split(LABELS, 6, 0.3, convention="per-client", seed=1)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_iid_split():
    parts = iid_split(LABELS, 6, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(len(LABELS)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert _skew(parts) < 0.4


def test_bounded_retries_then_a_clear_error():
    # 10 examples over 5 clients with at least 2 each under extreme skew: essentially never
    with pytest.raises(RuntimeError, match="in 3 tries"):
        dirichlet_split([0] * 5 + [1] * 5, 5, 0.01, min_size=2, retries=3)


@pytest.mark.parametrize("kw,match", [(dict(beta=0.0), "beta"), (dict(beta=float("nan")), "beta"),
                                      (dict(convention="by-class"), "convention"), (dict(clients=0), "clients"),
                                      (dict(clients=1000), "clients"), (dict(labels=[0.5, 1.5]), "labels"),
                                      (dict(labels=[]), "labels"), (dict(min_size=100), "need more")])
def test_bad_arguments(kw, match):
    args = dict(labels=LABELS, clients=5, beta=0.5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        dirichlet_split(args.pop("labels"), args.pop("clients"), args.pop("beta"), **args)
