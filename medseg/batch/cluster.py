"""Archive segmentation on a Ray cluster: one actor per GPU (or CPU share), each holding one loaded model.

The driver (the ``medseg segment`` process) discovers the items, owns the ledger and hands the work out: the next
study goes to the first free actor (``ray.wait`` on the calls in flight), largest studies first. With each study an
actor is also given the one it will compute next, which it reads in a background thread meanwhile. An actor reads
its study from the input folder, computes the label and writes the case into a temp folder under the output folder,
and returns the checksums; the driver renames the folder into place and records the ledger row, so outputs are
published exactly as in a local run (atomic rename, sha256 per file).

**The input and output folders must be on a file system shared by all nodes, at the same path** (NFS, Lustre, a
cloud file system), and medseg must be installed on every node; a checkpoint path must be readable there too
(``models:/`` URIs need the tracking server reachable from the nodes).

An actor or node that dies fails only the study it was computing: that study's temp folder is removed, it is marked
``FAILED`` and handed out once more in the same run (a second loss leaves it ``FAILED`` for the next run); the study
it had only read ahead goes to another actor. A rerun resumes from the ledger. A study computing past the case time
limit (:mod:`medseg.batch.deadline`, timed from its hand-out) fails alone too: the driver kills the actor, marks the
study ``FAILED`` (``WorkerTimeout``; not handed out again: it would likely hang again) and starts a replacement.

Ray is optional (``pip install medseg[ray]``) and imported only here.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medseg.batch.deadline import TIMEOUT_REASON, CaseTimeout
from medseg.batch.discover import WorkItem
from medseg.batch.ledger import Ledger
from medseg.batch.process import (
    Computed,
    ItemOutcome,
    Rejected,
    RunContext,
    compute_item,
    failure,
    load_or_failure,
    record_lost,
    record_result,
    timed_loader,
)
from medseg.batch.publish import remove_item_temps
from medseg.batch.workers import ModelSource, largest_first
from medseg.errors import ConfigError, MedsegError

logger = logging.getLogger(__name__)

__all__ = [
    "ACTOR_PREFIX",
    "RETRIES_AFTER_LOST_ACTOR",
    "RayTarget",
    "SegmentActor",
    "check_device",
    "import_ray",
    "parse_ray",
    "plan_actors",
    "run_on_ray",
]

RETRIES_AFTER_LOST_ACTOR = 1
ACTOR_PREFIX = "medseg-segment-"
_WAIT_LOG_S = 60.0
_LOCAL = re.compile(r"^local(?::(\d+))?$")
INSTALL_HINT = "Ray is not installed; install it with: pip install 'medseg[ray]'"


@dataclass(frozen=True)
class RayTarget:
    """Where to run: a new local Ray instance (``local``, with ``cpus`` CPUs or all) or an existing cluster."""

    address: str | None  # None: start a local instance
    cpus: int | None = None


def parse_ray(text: str) -> RayTarget:
    """``--ray`` value: ``auto`` (the cluster this node belongs to), an address (``HOST:PORT``, ``ray://HOST:PORT``)
    or ``local`` / ``local:N`` (a new Ray instance on this machine with N CPUs).

    Raises:
        ConfigError: an empty value or ``local:0``.
    """
    text = (text or "").strip()
    if not text:
        raise ConfigError("--ray: expected auto, an address (HOST:PORT or ray://HOST:PORT), local or local:N")
    m = _LOCAL.match(text)
    if m:
        cpus = int(m.group(1)) if m.group(1) else None
        if cpus == 0:
            raise ConfigError("--ray local:N: N must be >= 1")
        return RayTarget(None, cpus)
    return RayTarget(text)


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


class SegmentActor:
    """A Ray actor: one loaded model; computes one item at a time and reads the next one meanwhile."""

    def __init__(
        self, model: ModelSource, ctx: RunContext, threads: int, setup: Callable[[], None] | None, level: int
    ) -> None:
        import socket
        from concurrent.futures import ThreadPoolExecutor

        import torch

        logging.basicConfig(level=level, format="%(levelname)s actor %(name)s: %(message)s")
        torch.set_num_threads(threads)
        if setup is not None:
            setup()
        self.predictor = model.load()
        self.ctx = ctx
        self.load = timed_loader(self.predictor.spec, ctx.root)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="medseg-read")
        self.ahead: tuple[str, Any] | None = None

    def ready(self) -> str:
        """The actor's name (host:pid), once the model is loaded."""
        return self.name

    def compute(self, item: WorkItem, ahead: WorkItem | None) -> Computed | Rejected:
        """Compute ``item`` into a temp folder; start reading ``ahead`` (the next item given to this actor)."""
        if self.ahead is not None and self.ahead[0] == item.key:
            loaded = self.ahead[1].result()
        else:
            loaded = load_or_failure(self.load, item)
        self.ahead = None if ahead is None else (ahead.key, self.pool.submit(load_or_failure, self.load, ahead))
        try:
            return compute_item(loaded, self.predictor, self.ctx)
        except Exception as exc:  # compute_item returns item errors; anything else still ends only this item
            return failure(item, exc, self.ctx, 0.0)


def _connect(ray: Any, target: RayTarget) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        logger.info("using the Ray connection this process already has")
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if target.address is None:
        ray.init(num_cpus=target.cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)
    else:
        ray.init(address=target.address, **kwargs)
    return True


@dataclass(frozen=True)
class _Plan:
    actors: int
    gpus: int  # per actor (0 or 1)
    cpus: int  # per actor
    device: str  # the device an actor loads its model on


def check_device(device: str) -> str:
    """The ``--device`` value for a Ray run: ``auto``, ``cuda`` or ``cpu`` (Ray gives each actor its own GPU).

    Raises:
        ConfigError: a device list or ``cuda:N`` (which pin local workers), or not a device (the message names it).
    """
    name = device.strip().lower() if isinstance(device, str) else ""
    if "," in name or re.match(r"^cuda:\d+$", name):
        raise ConfigError(
            f"device {device!r}: with --ray each actor gets its own GPU from Ray; use --device auto, cuda or cpu"
        )
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not a device; with --ray use auto, cuda or cpu")
    return name


def plan_actors(
    device: str, workers: int | None, cluster_gpus: float, cluster_cpus: float, min_node_cpus: float
) -> _Plan:
    """How many actors, with which resources: one per GPU when the cluster has GPUs (unless ``device`` is cpu),
    else CPU actors sharing the CPUs (each fitting on the smallest node); ``workers`` caps the number.

    Raises:
        ConfigError: ``cuda`` asked for but the cluster has no GPU, or a device list (which pins local workers).
    """
    name = check_device(device)
    gpus = int(cluster_gpus)
    if name == "cuda" and gpus < 1:
        raise ConfigError("device 'cuda': the Ray cluster has no GPU; use --device cpu or auto")
    if gpus >= 1 and name != "cpu":
        return _Plan(actors=workers or gpus, gpus=1, cpus=1, device="cuda")
    total = max(1, int(cluster_cpus))
    actors = workers or total
    per_actor = max(1, min(int(min_node_cpus) or 1, total // actors))
    return _Plan(actors=actors, gpus=0, cpus=per_actor, device="cpu")


def _cluster_resources(ray: Any) -> tuple[float, float, float]:
    res = ray.cluster_resources()
    node_cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return res.get("GPU", 0.0), res.get("CPU", 1.0), min(node_cpus) if node_cpus else 1.0


def run_on_ray(
    items: Sequence[WorkItem],
    model: ModelSource,
    ctx: RunContext,
    ledger: Ledger,
    on_outcome: Callable[[ItemOutcome], None],
    *,
    target: RayTarget,
    device: str = "auto",
    workers: int | None = None,
    setup: Callable[[], None] | None = None,
    timeout: CaseTimeout | None = None,
) -> list[str]:
    """Process ``items`` on Ray actors; returns the names of the actors that were lost.

    Args:
        target: where Ray runs (see :func:`parse_ray`).
        device, workers: see :func:`plan_actors`.
        setup: a picklable callable each actor runs before loading the model (e.g. to register a custom network).
        timeout: the per-case time limit (None: none); an actor past it is killed and replaced.

    The actors are named ``medseg-segment-<run token>-<i>`` (``ray.util.list_named_actors()``), so an operator can
    find them in the Ray dashboard or state API.
    """
    ray = import_ray()
    started = _connect(ray, target)
    actors: list[Any] = []
    in_flight: dict[Any, tuple[Any, WorkItem, WorkItem | None, float]] = {}
    try:
        plan = plan_actors(device, workers, *_cluster_resources(ray))
        count = min(plan.actors, len(items))
        logger.info(
            "Ray: %d actor(s), %d GPU and %d CPU each, model on %s", count, plan.gpus, plan.cpus, plan.device
        )
        remote = ray.remote(SegmentActor)
        source = model.on(plan.device)
        level = logging.getLogger("medseg").getEffectiveLevel()
        token = secrets.token_hex(3)

        def spawn() -> Any:
            actor = remote.options(
                name=f"{ACTOR_PREFIX}{token}-{len(actors)}", num_gpus=plan.gpus, num_cpus=plan.cpus, max_restarts=0
            ).remote(source, ctx, plan.cpus, setup, level)
            actors.append(actor)
            return actor

        for _ in range(count):
            spawn()
        return _drive(list(actors), items, ctx, ledger, on_outcome, in_flight, spawn=spawn, timeout=timeout)
    finally:
        for actor in actors:
            ray.kill(actor)
        # interrupted: no half-written case is left (a case an actor still writes after this is removed as a stale
        # temp folder by the next run)
        for _actor, item, _ahead, _at in in_flight.values():
            remove_item_temps(ctx.output, item.key)
        if started:
            ray.shutdown()


def _drive(
    actors: list[Any],
    items: Sequence[WorkItem],
    ctx: RunContext,
    ledger: Ledger,
    on_outcome: Callable[[ItemOutcome], None],
    in_flight: dict[Any, tuple[Any, WorkItem, WorkItem | None, float]],
    *,
    spawn: Callable[[], Any],
    timeout: CaseTimeout | None = None,
) -> list[str]:
    from ray.exceptions import RayActorError, RayTaskError

    ray = import_ray()
    pending = collections.deque(largest_first(items))
    durations: list[float] = []  # of the studies computed in this run (for the automatic time limit)
    losses: collections.Counter[str] = collections.Counter()
    names: dict[Any, str] = {}
    starting = {actor.ready.remote(): actor for actor in actors}
    idle: collections.deque[Any] = collections.deque()
    lost: list[str] = []
    start_errors: list[str] = []

    def submit(actor: Any, item: WorkItem) -> None:
        ahead = pending.popleft() if pending else None
        assigned_at = time.time()  # before mark_started: record_lost tells "started" by started_at >= assigned_at
        ledger.mark_started(item.key)
        in_flight[actor.compute.remote(item, ahead)] = (actor, item, ahead, assigned_at)

    def finish(ref: Any) -> None:
        actor, item, ahead, assigned_at = in_flight.pop(ref)
        name = names.get(actor, "actor")
        try:
            result = ray.get(ref)
        except RayActorError as exc:  # the actor or its node died: only this item is affected
            logger.error("Ray actor %s was lost: %s", name, _first_line(exc))
            lost.append(name)
            if ahead is not None:
                pending.appendleft(ahead)  # only read ahead: nothing happened to it
            outcome = record_lost(item, ledger, ctx, assigned_at=assigned_at, why=f"Ray actor {name} was lost")
            losses[item.key] += 1
            if outcome is None or losses[item.key] <= RETRIES_AFTER_LOST_ACTOR:
                logger.warning("item %s: handed out again after its actor was lost", item.key)
                pending.appendleft(item)
            else:
                on_outcome(dataclasses.replace(outcome, worker=name))
            return
        except RayTaskError as exc:  # raised outside compute_item's own handling: this item fails
            remove_item_temps(ctx.output, item.key)
            result = failure(item, exc, ctx, 0.0)
        durations.append(time.time() - assigned_at)
        on_outcome(dataclasses.replace(record_result(item, result, ledger, ctx), worker=name))
        if ahead is not None:
            submit(actor, ahead)
        else:
            idle.append(actor)

    def stop_overdue() -> None:
        """Kill the actors whose study has run past the time limit; fail the study, start a replacement."""
        now, limit = time.time(), timeout.limit(durations) if timeout is not None else math.inf
        for ref, (actor, item, ahead, assigned_at) in list(in_flight.items()):
            if now - assigned_at <= limit or ray.wait([ref], timeout=0)[0]:  # a result that just came counts
                continue
            name = names.get(actor, "actor")
            logger.error("Ray actor %s: item %s ran past the case time limit (%.0f s); stopping it", name, item.key, limit)
            ray.kill(actor, no_restart=True)
            del in_flight[ref]
            if ahead is not None:
                pending.appendleft(ahead)  # only read ahead: nothing happened to it
            why = f"no result after {limit:.0f} s (the case time limit); Ray actor {name} was stopped"
            outcome = record_lost(item, ledger, ctx, assigned_at=assigned_at, why=why, reason=TIMEOUT_REASON)
            if outcome is not None:
                on_outcome(dataclasses.replace(outcome, worker=name))
            if pending:
                replacement = spawn()
                starting[replacement.ready.remote()] = replacement

    def wait_s() -> float:
        if timeout is None or not in_flight:
            return _WAIT_LOG_S
        first = min(at for _a, _i, _h, at in in_flight.values())
        return max(0.05, min(_WAIT_LOG_S, first + timeout.limit(durations) - time.time()))

    waited = time.perf_counter()
    while in_flight or (starting and pending):
        span = wait_s()
        done, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=span)
        stop_overdue()
        if not done:
            if not in_flight and span >= _WAIT_LOG_S:
                logger.warning(
                    "waited %.0f s for Ray to start the actors (is the cluster big enough?)",
                    time.perf_counter() - waited,
                )
            continue
        ref = done[0]
        if ref in starting:
            actor = starting.pop(ref)
            try:
                names[actor] = ray.get(ref)
                logger.info("Ray actor %s ready", names[actor])
                idle.append(actor)
            except (RayActorError, RayTaskError) as exc:
                logger.error("a Ray actor could not start: %s", _cause(exc))
                start_errors.append(_cause(exc))
        else:
            finish(ref)
        while idle and pending:
            submit(idle.popleft(), pending.popleft())
    if pending and not names:
        raise MedsegError(f"no Ray actor could start ({start_errors[0] if start_errors else 'no resources'})")
    if pending:
        logger.error("no Ray actor left: %d item(s) stay PENDING for the next run", len(pending))
    return lost


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """The last line of a Ray error's text: the exception raised in the actor (``ConfigError: ...``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
