"""Atomic file writes: a crash or kill -9 leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os


def write_bytes(path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
