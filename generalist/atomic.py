"""Files written whole or not at all: a partial file beside the target, then one rename over it.

A process killed mid-write leaves the old file (or none) and a stray `.partial`, never a truncated file that a
later run would read. Recorded datasets need more (fsync of files and directory, shards as directories) and
keep their own writer (datasets/storage.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write` on a partial file beside `path`, then rename it over `path`."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to `path` whole or not at all."""
    write_atomically(path, lambda partial: partial.write_text(text))
