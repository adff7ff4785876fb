"""Hold back a third-party library's log records while medseg calls it.

pydicom logs decoder failures with a full traceback before raising, and nibabel logs (to its own stderr handler)
the header fields it "fixes"; medseg checks those conditions itself and reports one line with a reason code, so the
libraries' records would only add noise (or a traceback) in front of it. The suppression is re-entrant and shared
between threads (a logger's level is process-wide): the first entry raises the level, the last exit restores it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

__all__ = ["quiet_logger"]

_lock = threading.Lock()
_depth: dict[str, int] = {}
_saved: dict[str, int] = {}


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Drop every record of logger ``name`` (and its children) inside the block."""
    log = logging.getLogger(name)
    with _lock:
        if _depth.get(name, 0) == 0:
            _saved[name] = log.level
            log.setLevel(logging.CRITICAL + 1)
        _depth[name] = _depth.get(name, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _depth[name] -= 1
            if _depth[name] == 0:
                log.setLevel(_saved.pop(name))
