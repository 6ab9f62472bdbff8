"""The Triton kernels' tiles: aligned in the global element index, full tiles launched without masks and
the partial first and last tiles of a tensor in a masked launch. Every split must give the same bits as
the torch reference. Small tiles (block 4: 16 elements) keep Triton's interpreter fast."""

import pytest
import torch

import zokernels
from zokernels import reference

from conftest import bits

tn = pytest.importorskip("zokernels.triton.noise")

BLOCK = 4
TILE = 4 * BLOCK
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid[0], kw["MASKED"]))


def test_tiles_cover_the_range_once_and_only_the_ends_are_partial():
    for numel in range(0, 3 * TILE + 2):
        for offset in (0, 1, TILE - 1, TILE, 2**32 * 4 - 5):
            full, partial = tn._tiles(numel, offset, BLOCK)
            tiles = [t for first, n in full + partial for t in range(first, first + n)]
            touched = {(offset + j) // TILE for j in range(numel)}
            assert sorted(tiles) == sorted(touched), (numel, offset)
            for first, n in full:
                assert offset <= first * TILE and (first + n) * TILE <= offset + numel
            assert len(partial) <= 2 and all(n == 1 for _, n in partial)
            for t, _ in partial:
                assert not (offset <= t * TILE and (t + 1) * TILE <= offset + numel)


@pytest.mark.parametrize("numel, offset, launches", [
    (3 * TILE, 0, [(3, False)]),  # whole tiles only: no masked launch at all
    (3 * TILE, 4, [(2, False), (2, True)]),  # 4 + 48 elements: tiles 0 and 3 partial
    (3 * TILE, 5, [(4, True)]),  # groups not on a 4-element boundary in memory: no vector access, all masked
    (TILE - 1, 0, [(1, True)]),
    (TILE + 1, TILE, [(1, False), (1, True)]),
])
def test_full_tiles_run_unmasked(monkeypatch, numel, offset, launches):
    for kernel in ("_noise_kernel", "_update_kernel"):
        rec = _Recorder()
        monkeypatch.setattr(tn, kernel, rec)
        if kernel == "_noise_kernel":
            tn.noise(torch.empty(numel), offset, 1, 0, "gaussian", block=BLOCK)
        else:
            tn.update_([torch.zeros(numel)], [1], [0.5], [0], [offset], "gaussian", "nearest", block=BLOCK)
        assert rec.calls == launches, kernel


SIZES = [1, TILE - 1, TILE, TILE + 1, 3 * TILE + 7]
OFFSETS = [0, 3, TILE - 1, 2**34 - 9]  # the last crosses the 2^32-group boundary, where the high counter word steps


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("numel", SIZES)
def test_noise_matches_the_reference_for_every_split(numel, offset):
    for dist in ("gaussian", "rademacher", "uniform"):
        out = torch.empty(numel, device=DEVICE)
        tn.noise(out, offset, 2**64 - 3, 7, dist, block=BLOCK)
        ref = reference.noise(numel, 2**64 - 3, 7, offset, dist, "cpu")
        assert torch.equal(bits(out), bits(ref)), dist


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_several_tensors_in_one_launch_match_the_reference(rounding):
    """Tensors of every size and offset above, mixed dtypes, share the masked and unmasked launches."""
    gen = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    cases = [(n, o) for n in SIZES for o in OFFSETS]
    tensors = [(torch.randn(n, generator=gen) * 0.1).to(dtypes[i % 3]) for i, (n, _) in enumerate(cases)]
    offsets = [o for _, o in cases]
    keys = list(range(len(cases)))
    seeds, coeffs = [5, 2**63 + 1], [1e-2, -3e-3]
    expected = [t.clone() for t in tensors]
    for t, key, off in zip(expected, keys, offsets):
        reference.update_(t, seeds, coeffs, key, off, "gaussian", rounding)
    got = [t.to(DEVICE) for t in tensors]
    flags = tn.update_(got, seeds, coeffs, keys, offsets, "gaussian", rounding, block=BLOCK)
    assert all(torch.equal(bits(g.cpu()), bits(e)) for g, e in zip(got, expected))
    assert not any(bool(f) for f in flags)


def test_default_block_matches_the_reference_across_a_full_tile():
    n, offset = 4 * tn.BLOCK_G + 3, 2
    out = torch.empty(n, device=DEVICE)
    tn.noise(out, offset, 9, 1, "gaussian")
    assert torch.equal(bits(out.cpu()), bits(zokernels.noise(n, 9, key=1, offset=offset, backend="torch")))


def test_misaligned_tensors_take_the_masked_launch_and_match_the_reference():
    """A view one element into its storage puts the Philox groups across vector boundaries: its full
    tiles must go to the masked launch (no vector-alignment hint), for the written and the read tensor."""
    buf = torch.linspace(-1, 1, 4 * TILE + 1, device=DEVICE)
    for t, src in [(buf[1:], None), (torch.zeros(4 * TILE, device=DEVICE), buf[1:])]:
        expected = (t if src is None else src).cpu().clone()
        reference.update_(expected, [3], [0.25], 2, 0, "uniform", "nearest")
        rec = _Recorder()
        real = tn._update_kernel
        tn._update_kernel = rec
        try:
            tn.update_([t], [3], [0.25], [2], [0], "uniform", "nearest", [src] if src is not None else None,
                       block=BLOCK)
        finally:
            tn._update_kernel = real
        assert rec.calls == [(4, True)]
        tn.update_([t], [3], [0.25], [2], [0], "uniform", "nearest", [src] if src is not None else None, block=BLOCK)
        assert torch.equal(bits(t.cpu()), bits(expected))
    out = torch.empty(TILE + 1, device=DEVICE)[1:]
    tn.noise(out, 0, 3, 2, "gaussian", block=BLOCK)
    assert torch.equal(bits(out.cpu()), bits(reference.noise(TILE, 3, 2, 0, "gaussian", "cpu")))


@pytest.mark.parametrize("block", [0, 3, 12])
def test_block_must_be_a_power_of_two(block):
    with pytest.raises(ValueError, match="power of two"):
        tn.noise(torch.empty(4), 0, 1, 0, "gaussian", block=block)
    with pytest.raises(ValueError, match="power of two"):
        tn.update_([torch.zeros(4)], [1], [0.5], [0], [0], "gaussian", "nearest", block=block)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_bfloat16_full_tiles_read_the_source_and_write_the_target(rounding):
    """Full bfloat16 tiles move one 64-bit word per Philox group: read from the source, written to the
    target, each group's four elements in order, next to the masked tail tiles of the same tensors."""
    gen = torch.Generator().manual_seed(1)
    cases = [(2 * TILE, 0), (3 * TILE + 7, 4), (TILE + 4, 2**34 - 4)]  # offsets keep the groups word-aligned
    sources = [(torch.randn(n, generator=gen) * 3).to(torch.bfloat16) for n, _ in cases]
    targets = [torch.zeros(n, dtype=torch.bfloat16, device=DEVICE) for n, _ in cases]
    offsets, keys = [o for _, o in cases], [3, 4, 5]
    originals = [s.clone() for s in sources]
    expected = [torch.zeros(n, dtype=torch.bfloat16) for n, _ in cases]
    for t, src, key, off in zip(expected, sources, keys, offsets):
        reference.update_(t, [7, 2**64 - 1], [0.125, -2.0], key, off, "gaussian", rounding, src)
    on_device = [s.to(DEVICE) for s in sources]
    tn.update_(targets, [7, 2**64 - 1], [0.125, -2.0], keys, offsets, "gaussian", rounding, on_device, block=BLOCK)
    assert all(torch.equal(bits(t.cpu()), bits(e)) for t, e in zip(targets, expected))
    assert all(torch.equal(bits(s.cpu()), bits(o)) for s, o in zip(on_device, originals))
