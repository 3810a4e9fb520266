"""A change counter shared by every process on one machine that opens the same SQLite gateway file.

The key store reads its keys from the database, and another process (``corral
keys create``, a second server on the same file) may change them at any
time. Asking the database on every request costs each request a SQLite read
(tens of microseconds on the proxy's hot path); asking this counter costs one
memory read. :class:`ChangeCounter` is eight bytes in a small file next to the
database (``corral.db-keys``), mapped into memory by every process that opens
it. A writer bumps it after its transaction has committed, holding an
exclusive ``flock`` so two bumps never collapse into one; a reader that
remembers the value it saw before reading the database knows its copy is
current as long as the counter still shows that value. A torn read of the
eight bytes can only show a value that differs, which costs one extra
database read, never a stale answer.

PostgreSQL replicas may sit on different machines, so there the key store
keeps asking the database (see :meth:`corral.gateway.db.Database.change_counter`).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_FORMAT = struct.Struct("<Q")


class ChangeCounter:
    """A 64-bit counter in a memory-mapped file (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _locked(path) as fd:
            if os.fstat(fd).st_size < _FORMAT.size:
                os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size)  # keeps its own descriptor

    def value(self) -> int:
        return int(_FORMAT.unpack_from(self._map)[0])

    def bump(self) -> None:
        """Tell every reader that what it remembers is out of date."""
        with _locked(self.path):
            _FORMAT.pack_into(self._map, 0, (self.value() + 1) % (1 << 64))


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The file at ``path`` (created if missing), open and exclusively locked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield fd
        finally:  # explicitly: a map made from ``fd`` shares its lock, and outlives this close
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
