"""One build per output folder: an advisory lock that names its holder.

``flock`` is released by the kernel when the holder dies, so a lock file left by a killed
build is simply taken over (and the takeover is reported); a live holder makes a second
build stop at once, before it reads or writes anything else.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from denseface.errors import OutputBusy, OutputError

LOCK_NAME = ".denseface-build.lock"


def _holder(fd: int) -> str:
    return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()


@contextmanager
def output_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.denseface-build.lock`` for the duration of a build."""
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {root}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(f"output folder {root} is in use by another build ({_holder(fd) or 'holder unknown'}); "
                             f"wait for it to finish or choose another --out") from None
        previous = _holder(fd)
        if previous:
            print(f"note: took over the lock of a build that is no longer running ({previous})", file=sys.stderr)
        me = (f"pid {os.getpid()} on {socket.gethostname()}, "
              f"since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        yield
        os.ftruncate(fd, 0)  # a clean exit leaves an empty lock file: nothing to take over
    finally:
        os.close(fd)  # releases the lock
