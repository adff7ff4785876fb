"""The lock of a run's journal (:mod:`medseg.tracking.journal`): an ``flock`` on ``owner.lock``, held by the run's
process while it runs and by a replay while it sends.

Why ours: a replay must never send a spool whose run is still writing it, and only the kernel knows whether the
run's process still lives (the lock dies with it, SIGKILL included). Where the file system has no ``flock``
(Lustre mounted without ``-o flock``, some NFS and FUSE mounts) the journal runs unlocked and the header's pid and
host stand in (tests/test_tracking_replay.py, ``test_a_file_system_without_flock_...``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NoLockError", "pid_alive", "try_lock"]

_HELD_LOCKS: set[int] = set()  # lock descriptors of this process's open journals


def _close_inherited_locks() -> None:
    """In a forked child: let go of the parent's journal locks (they must die with the parent, not the child)."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


# what flock answers on file systems without locks (Lustre without -o flock, some NFS and FUSE mounts)
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class NoLockError(OSError):
    """The file system of a spool has no ``flock``: whether its run still lives is told by its header's pid."""


def try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock``, or ``None`` when another one holds it.

    Raises :class:`NoLockError` when the file system cannot lock at all."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no owner check
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno in _NO_FLOCK:
            raise NoLockError(exc.errno, f"{path}: no file locks on this file system ({exc.strerror})") from exc
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def pid_alive(header: Mapping[str, Any]) -> bool | None:
    """Whether the header's process still runs (``None``: on another host, or no pid: cannot tell)."""
    pid = header.get("pid")
    if not isinstance(pid, int) or header.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True
