"""Data-parallel training (DDP): the process group of one run and the few collectives the training loop needs.

A run of ``N`` processes (ranks) is started by ``torchrun`` (``medseg train --nproc N`` starts it for you), which
sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each process; the group is
joined from them (``init_method="env://"``). The backend is NCCL when training on CUDA -- one GPU per rank,
``cuda:LOCAL_RANK`` -- and Gloo on CPU.

:class:`Distributed` is what the loop sees: the rank, the device, and collectives that are no-ops for a single
process (:data:`LOCAL`), so the loop has one code path. What is shared between ranks:

* the loss of every step (:meth:`Distributed.mean`): the value logged and checked for divergence is the mean over
  ranks, so a non-finite loss on any rank stops every rank at the same step;
* the decisions of rank 0's run clock under a time budget (:meth:`Distributed.from_main`): the learning rate
  (fraction of the run done), the end of the budget and the last epoch, so no rank waits in a collective that the
  others have left;
* the validation metrics (validation runs on rank 0, the others wait for its result).

torchrun starts each rank in a session of its own, so a signal to torchrun's process group (``kill -9 -PGID``)
does not reach the ranks; each rank therefore watches its launcher and stops when it is gone
(:func:`watch_launcher`), rather than training on unsupervised beside a resumed run.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from medseg.errors import ConfigError
from medseg.launch import TORCHRUN_KEYS

logger = logging.getLogger(__name__)

#: how long a rank waits in a collective (e.g. for rank 0's validation) before giving up
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """One process of a data-parallel run (``world_size`` 1: a plain single-process run, no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, writes checkpoints, logs and registers."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def _tensor(self, values: list[float]) -> torch.Tensor:
        device = self.device if self.device is not None and self.device.type == "cuda" else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=device)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = self._tensor([value])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself for one process).

        Every parameter of medseg's networks takes part in every training forward pass, deep supervision heads
        included (tests/test_training_ddp.py checks each registered network), so unused-parameter detection is off.
        """
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        on_cuda = self.device is not None and self.device.type == "cuda"
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if on_cuda else None,
            output_device=self.device.index if on_cuda else None,
            find_unused_parameters=False,
        )


#: the single-process context
LOCAL = Distributed()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (the model itself otherwise): what checkpoints store."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _rank_device(device: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when ``device`` is (or ``auto`` resolves to) CUDA, else CPU."""
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = torch.device(device).type
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ConfigError(f"train.device: {device!r} is not supported for several processes (use cpu or cuda)")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} requested but CUDA is not available on this machine")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {n}; start at most {n} process(es) per node"
        )
    if device not in ("auto", "cuda"):
        logger.warning("train.device %r: each process uses cuda:LOCAL_RANK (here cuda:%d)", device, local_rank)
    return torch.device("cuda", local_rank)


def watch_launcher(interval: float = 0.5) -> threading.Event:
    """Stop this process (exit status 1) as soon as its parent -- the launcher -- has died.

    Returns the event that ends the watch when set.
    """
    parent, stop = os.getppid(), threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                logger.error("the launcher (pid %d) is gone: stopping this rank", parent)
                logging.shutdown()
                os._exit(1)

    threading.Thread(target=watch, name="medseg-launcher-watch", daemon=True).start()
    return stop


@contextlib.contextmanager
def process_group(env: Mapping[str, str], device: str = "auto") -> Iterator[Distributed]:
    """Join the process group described by torchrun's variables in ``env``; leave it at the end.

    The process exits when its launcher dies (:func:`watch_launcher`).

    Args:
        env: the process environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``): its type picks the backend; the GPU index is
            ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    missing = [k for k in TORCHRUN_KEYS if k not in env]
    if missing:
        raise ConfigError(f"not started by torchrun: {', '.join(missing)} not set")
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    dev = _rank_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    watch = watch_launcher()
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=TIMEOUT)
    logger.debug("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    try:
        yield Distributed(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    finally:
        watch.set()
        if dist.is_initialized():
            dist.destroy_process_group()
