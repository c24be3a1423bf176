"""Noticing that a file changed, cheaply: its modification time and size, or None when it cannot be read."""

from __future__ import annotations

import os


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
