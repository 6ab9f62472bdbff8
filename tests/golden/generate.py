"""Writes tests/golden/noise_v{version}.json for every spec version from the torch reference (the readable
definition).

Run only when a spec version is added: `python tests/golden/generate.py`. The committed files are
what every backend is tested against, so an accidental change to a stream fails the suite (and an
existing file must come out byte for byte the same: check `git diff`).
"""

import json
import pathlib

import torch

from zokernels import reference, spec

NOISE_CASES = [  # (seed, key, offset, numel)
    (0, 0, 0, 16),
    (1, 7, 3, 13),
    (12345, 1, 2**31 - 6, 12),
    (2**32 + 5, 2**32 - 1, 2**32 - 5, 11),
    (2**64 - 1, 123456789, 2**40 + 1, 9),
    (0xDEADBEEFCAFEF00D, 42, 2**62 - 16, 16),
]
UPDATE_SEEDS = [3, 2**63 + 11, 77]
UPDATE_COEFFS = [1e-3, -2.5e-3, 0.75]
UPDATE_NUMEL, UPDATE_KEY, UPDATE_OFFSET = 37, 5, 2


def initial_weights() -> torch.Tensor:
    """A fixed float32 start covering normal, tiny (fp16-subnormal) and large magnitudes."""
    i = torch.arange(UPDATE_NUMEL, dtype=torch.float32)
    w = (i - 18.0) * 0.37
    w[::7] = w[::7] * 1e-6
    w[5] = 60000.0
    return w


def bits(t: torch.Tensor) -> str:
    width = t.element_size() * 2
    view = {4: torch.int32, 2: torch.int16}[t.element_size()]
    mask = (1 << (8 * t.element_size())) - 1
    return " ".join(f"{int(v) & mask:0{width}x}" for v in t.contiguous().view(view).reshape(-1))


def golden(version: int) -> dict:
    out = {"spec_version": version, "noise": [], "update": []}
    for dist in spec.PORTABLE_DISTS:
        for seed, key, offset, numel in NOISE_CASES:
            z = reference.noise(numel, seed, key, offset, dist, "cpu", version)
            out["noise"].append(dict(dist=dist, seed=seed, key=key, offset=offset, bits=bits(z)))
        for dtype in ("float32", "bfloat16", "float16"):
            for rounding in spec.ROUNDINGS:
                w = initial_weights().to(getattr(torch, dtype))
                reference.update_(w, UPDATE_SEEDS, UPDATE_COEFFS, UPDATE_KEY, UPDATE_OFFSET, dist, rounding,
                                  version=version)
                out["update"].append(dict(dist=dist, dtype=dtype, rounding=rounding, bits=bits(w)))
    return out


def main() -> None:
    for version in spec.SPEC_VERSIONS:
        path = pathlib.Path(__file__).with_name(f"noise_v{version}.json")
        path.write_text(json.dumps(golden(version), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
