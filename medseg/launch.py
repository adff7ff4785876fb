"""Start a data-parallel training run on this machine: ``torchrun --standalone`` with one process per rank.

``medseg train --nproc N ...`` calls :func:`launch_torchrun`, which runs ``python -m torch.distributed.run
--standalone --nproc-per-node N -m medseg.train ...`` as a child process and waits for it. torchrun sets each
rank's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` variables, restarts nothing (``--max-restarts 0``) and,
when a rank fails, stops the others and prints which rank failed and why. For several machines, run torchrun
yourself on each node (``torchrun --nnodes ... --rdzv-endpoint ... -m medseg.train ...``).

If this process dies (even by SIGKILL), torchrun gets SIGTERM (Linux: ``PR_SET_PDEATHSIG``) and stops the ranks;
the ranks themselves stop when torchrun is gone (:func:`medseg.training.distributed.watch_launcher`). This module
does not import torch: the launching process stays light.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

#: the module each rank runs: ``python -m medseg.train ARGS`` is ``medseg train ARGS``
RANK_MODULE = "medseg.train"
#: the variables torchrun sets in every rank's environment
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun(env: Mapping[str, str]) -> bool:
    """Whether ``env`` (a process environment) is that of a rank started by torchrun."""
    return all(key in env for key in TORCHRUN_KEYS)


def torchrun_command(nproc: int, train_args: Sequence[str], python: str | None = None) -> list[str]:
    """The command that starts ``nproc`` ranks of ``medseg train train_args`` on this machine."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return [
        python or sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc-per-node={int(nproc)}", "--max-restarts=0",
        "-m", RANK_MODULE, *train_args,
    ]  # fmt: skip


def _term_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM to this process when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def launch_torchrun(nproc: int, train_args: Sequence[str]) -> int:
    """Run ``nproc`` ranks through torchrun and wait for them; returns torchrun's exit status (0: every rank
    succeeded).

    SIGTERM sent to this process is passed on to torchrun (which stops the ranks); Ctrl-C reaches torchrun and the
    ranks through the terminal, and this process waits for them to stop.
    """
    cmd = torchrun_command(nproc, train_args)
    logger.info("starting %d training processes: %s", nproc, " ".join(cmd))
    proc = subprocess.Popen(cmd, preexec_fn=_term_with_parent)  # noqa: PLW1509 - no threads started yet

    def forward(signum: int, frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    def wait_for_ranks(signum: int, frame: Any) -> None:
        logger.warning("interrupted: waiting for the training processes to stop")

    previous = signal.signal(signal.SIGTERM, forward), signal.signal(signal.SIGINT, wait_for_ranks)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    if code != 0:
        logger.error(
            "the training run of %d processes failed (torchrun exit status %d); the failed rank and its error are "
            "shown above. Checkpoints of finished epochs are kept: continue with --resume", nproc, code,
        )
    return code
