"""Files of a run folder that survive crashes and show damage.

- write_bytes: atomic; a crash or kill -9 leaves the old file or the new one, never a torn one.
- sealed files (checkpoints): the sha256 of the content sits in a fixed header, so a flipped bit, a
  truncation or a torn write (from a copy, a full disk, a filesystem without atomic rename) reads as
  DamagedFileError naming the file, never as other data. A sealed JSON file stays JSON:
  {"sha256": "<hex of the content's bytes>",
   "content": <the content>}
- folder_lock: one run at a time writes a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re


class DamagedFileError(ValueError):
    """A file that a resume reads is not what the run wrote; the message names it and says what to do."""


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


def write_bytes(path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an error or Ctrl-C mid-write: leave the old file and no partial copy
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


# (header with the content's sha256 as 64 hex digits, trailer): everything but the digest is fixed bytes
_BINARY = (b"zofed sealed sha256=%s\n", b"")
_JSON = (b'{"sha256": "%s",\n "content": ', b"}\n")


def _seal(content: bytes, form) -> bytes:
    head, tail = form
    return head % hashlib.sha256(content).hexdigest().encode() + content + tail


def _unseal(path, form) -> bytes:
    head, tail = form
    with open(path, "rb") as f:
        data = f.read()
    prefix, suffix = head.split(b"%s")
    pattern = re.escape(prefix) + b"([0-9a-f]{64})" + re.escape(suffix)
    found = re.match(pattern, data)
    if not found or not data.endswith(tail):
        raise DamagedFileError(f"{path} is damaged: it does not start and end as a zofed checkpoint does "
                               "(truncated, or not written by this zofed version)")
    content = data[found.end():len(data) - len(tail)]
    if hashlib.sha256(content).hexdigest().encode() != found.group(1):
        raise DamagedFileError(f"{path} is damaged: its content does not match its sha256 (a changed bit or "
                               "a torn write)")
    return content


def write_sealed(path, content: bytes) -> None:
    write_bytes(path, _seal(content, _BINARY))


def read_sealed(path) -> bytes:
    return _unseal(path, _BINARY)


def write_sealed_json(path, obj) -> None:
    write_bytes(path, _seal(json.dumps(obj, indent=1).encode(), _JSON))


def read_sealed_json(path):
    content = _unseal(path, _JSON)
    try:
        return json.loads(content)
    except ValueError:  # a sound seal over content that is not JSON: not a file this zofed wrote
        raise DamagedFileError(f"{path} is damaged: its content is not JSON") from None


@contextlib.contextmanager
def folder_lock(folder):
    """Hold `folder`/.lock (created with the folder if missing) or raise FolderInUseError. The OS drops the
    lock when the process ends, however it ends, so a crashed run never leaves its folder locked."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"{folder} is in use by another zofed run (it holds {folder}/.lock); wait "
                                   "for it to end, or use another --out") from None
        yield
    finally:
        os.close(fd)
