"""Philox4x32-10 (spec v1) and Philox4x32-7 (spec v2) known-answer vectors (Random123's kat_vectors) on every
backend's generator."""

import pytest
import torch

from zokernels import _cpu, reference

# (rounds, counter words, key words, expected output) from Random123 kat_vectors, philox4x32 7 and 10
KAT = [
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


def _seed(key_words):
    return key_words[0] | (key_words[1] << 32)


@pytest.mark.parametrize("rounds,ctr,key,expected", KAT)
def test_reference_philox(rounds, ctr, key, expected):
    out = reference.philox(_seed(key), *[torch.tensor([c], dtype=torch.int64) for c in ctr], rounds=rounds)
    assert tuple(int(x) for x in out) == expected


@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
@pytest.mark.parametrize("rounds,ctr,key,expected", KAT)
def test_cpu_philox(rounds, ctr, key, expected):
    assert _cpu.require().philox(_seed(key), *ctr, rounds=rounds) == expected


@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_cpu_philox_refuses_other_round_counts():
    with pytest.raises(ValueError, match="rounds must be 10"):
        _cpu.require().philox(0, 0, 0, 0, 0, rounds=8)


@pytest.mark.parametrize("rounds,ctr,key,expected", KAT)
def test_triton_philox(rounds, ctr, key, expected):
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def kat(out, c_ptr, seed_ptr, ROUNDS: tl.constexpr):
        seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
        c = tl.load(c_ptr + tl.arange(0, 4)).to(tl.uint32)
        c0 = tl.sum(tl.where(tl.arange(0, 4) == 0, c, 0))
        c1 = tl.sum(tl.where(tl.arange(0, 4) == 1, c, 0))
        c2 = tl.sum(tl.where(tl.arange(0, 4) == 2, c, 0))
        c3 = tl.sum(tl.where(tl.arange(0, 4) == 3, c, 0))
        x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, c3, ROUNDS)
        tl.store(out, x0.to(tl.int64))
        tl.store(out + 1, x1.to(tl.int64))
        tl.store(out + 2, x2.to(tl.int64))
        tl.store(out + 3, x3.to(tl.int64))

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(4, dtype=torch.int64, device=dev)
    seed = _seed(key)
    seed_t = torch.tensor([seed - 2**64 if seed >= 2**63 else seed], dtype=torch.int64, device=dev)
    kat[(1,)](out, torch.tensor(ctr, dtype=torch.int64, device=dev), seed_t, ROUNDS=rounds)
    assert tuple(out.tolist()) == expected
