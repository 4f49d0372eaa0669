"""One writer at a time: an exclusive lock on a dataset or run directory, refused at once if another holds it.

Two `collect`s into one dataset, or two trainings into one run directory, would interleave their writes; the
atomic renames keep each file whole but not the whole consistent. The lock (`filelock`, an OS file lock that
dies with its process, so a killed writer never leaves it held) sits beside the directory, not inside it, so
that cleaning a directory never removes the lock that guards it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout


@contextlib.contextmanager
def exclusive(directory: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of `directory` for the block; a `ValueError` at once if another process holds it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.parent / f".{directory.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as error:
        raise ValueError(f"{directory} is being written by another process ({what}); wait for it to finish, or "
                         "write elsewhere") from error
    try:
        yield
    finally:
        lock.release()
