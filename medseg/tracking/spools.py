"""A training workdir's spools and ``medseg replay PATH``: find them, warn about unsent ones, replay them.

A training run keeps its journal under ``WORKDIR/mlflow-offline`` (:mod:`medseg.tracking.journal`); what is left
there after a run belongs to a run that ended with calls unsent, or to an interrupted one (killed: no end record,
no live owner). ``medseg train`` warns about them (:func:`warn_unsent_spools`, nothing is sent on its own) and
``medseg replay`` sends them (:func:`replay_spools`, through :func:`medseg.tracking.offline.replay_offline`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.errors import SpoolError, SpoolInUseError, TrackingUnavailableError
from medseg.tracking.journal import RECORDS_FILE, SpoolState, inspect_spool
from medseg.tracking.offline import replay_offline
from medseg.tracking.store import absolute_uri, check_tracking, redact_uri, resolve_tracking_uri

logger = logging.getLogger(__name__)

SPOOL_ROOT = "mlflow-offline"  # a training workdir's spool folders (medseg.workflows.train_and_register)
WORKDIR_MARKERS = ("config.yaml", "checkpoints")  # what medseg.training.run writes in a workdir


def spool_folders(path: str | Path) -> tuple[list[Path], Path | None]:
    """The spool folders of ``path`` and the training workdir they belong to (``None`` if not known).

    ``path`` is a spool folder, a training workdir (its ``mlflow-offline`` spools) or an ``mlflow-offline`` folder.
    """
    path = Path(path)
    if not path.exists():
        raise SpoolError(f"{path} does not exist")
    if (path / RECORDS_FILE).is_file():
        return [path], (path.parent.parent if path.parent.name == SPOOL_ROOT else None)
    root, workdir = (path, path.parent) if path.name == SPOOL_ROOT else (path / SPOOL_ROOT, path)
    if path.is_dir() and not root.is_dir() and any((path / m).exists() for m in WORKDIR_MARKERS):
        return [], workdir  # a training workdir whose runs all landed: nothing left behind
    if not path.is_dir() or not root.is_dir():
        raise SpoolError(
            f"{path} is neither an offline spool folder (no {RECORDS_FILE}) nor a training workdir (no {SPOOL_ROOT}/)"
        )
    return sorted(p for p in root.iterdir() if (p / RECORDS_FILE).is_file()), workdir


def _workdir_config_uri(workdir: Path) -> str | None:
    """``tracking.uri`` of the config the run of ``workdir`` trained with (``WORKDIR/config.yaml``), if set."""
    from medseg.config import load_config
    from medseg.errors import ConfigError

    path = workdir / "config.yaml"
    if not path.is_file():
        return None
    try:
        uri = load_config(path).tracking.uri
    except ConfigError as exc:
        logger.warning("%s: not used for the tracking URI (%s)", path, exc)
        return None
    return uri if uri and uri.strip() else None


def replay_tracking_uri(path: str | Path, explicit: str | None, env: Mapping[str, str]) -> str:
    """The store ``medseg train`` would pick for the workdir of ``path``: ``explicit``, else the workdir's
    ``tracking.uri`` (its ``config.yaml``), else ``MLFLOW_TRACKING_URI`` in ``env``, else the workdir's embedded
    store ``sqlite:///WORKDIR/mlruns.db``: where ``medseg replay`` sends a spool that does not name its own store."""
    if explicit and explicit.strip():
        return explicit.strip()
    _, workdir = spool_folders(path)
    configured = _workdir_config_uri(workdir) if workdir is not None else None
    if configured or env.get("MLFLOW_TRACKING_URI", "").strip():
        return resolve_tracking_uri(configured, env, ".")
    if workdir is None:
        raise SpoolError(
            f"{path} is not in a training workdir's {SPOOL_ROOT}/ folder: name the store with --tracking-uri "
            "or MLFLOW_TRACKING_URI"
        )
    return resolve_tracking_uri(None, {}, workdir)


@dataclass(frozen=True)
class SpoolReplay:
    """One line of ``medseg replay``: a spool and what its replay did (``result``) or why it was skipped."""

    folder: Path
    result: dict[str, Any] | None = None
    skipped: str | None = None
    recorded_for: str | None = None  # the store the run was tracked in, when not the replay's target
    in_use: bool = False  # its run is still alive (a training in progress): not a failure of the replay

    def line(self) -> str:
        if self.result is None:
            return f"{self.folder}: {'in use' if self.in_use else 'skipped'}: {self.skipped}"
        r = self.result
        run = f"run {r['run_id']} ({'new run' if r['created_run'] else 'continued'}, {r['status']}"
        run += ", interrupted)" if r["interrupted"] else ")"
        sent = ", ".join(f"{r[k]} {k}" for k in ("metrics", "params", "tags", "artifacts"))
        skipped = r["skipped_metrics"] + r["skipped_params"]
        extra = f"; {skipped} already in the run" if skipped else ""
        extra += f"; {r['missing_artifacts']} artifact copies missing" if r["missing_artifacts"] else ""
        extra += f"; {r['rejected']} rejected by the store" if r.get("rejected") else ""
        extra += f"; the run was tracked at {self.recorded_for}" if self.recorded_for else ""
        return f"{self.folder}: {run}: sent {sent}{extra}"


def recorded_uri(state: SpoolState) -> str | None:
    """The store the spool's run was tracked at, from its header; ``None`` when absent or stored without its
    password (``redact_uri``), which a replay could not log in with, or relative to a directory it does not name
    (spools written before headers held absolute URIs)."""
    uri = str(state.header.get("tracking_uri") or "").strip()
    if uri and absolute_uri(uri) != uri:
        logger.warning("%s: its store %s is a relative path: not used", state.folder, uri)
        return None
    return uri if uri and ":***@" not in uri else None


def replay_spools(
    path: str | Path,
    tracking_uri: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    force: bool = False,
    timeout_s: float = 10.0,
) -> Iterator[SpoolReplay]:
    """``medseg replay PATH``: replay one spool folder, or every spool of a workdir not replayed yet.

    Each spool goes to ``tracking_uri`` when given, else to the store its run was tracked at
    (:func:`recorded_uri`), else to the store ``medseg train`` would pick for its workdir with the environment
    ``env`` (:func:`replay_tracking_uri`).

    Raises ``SpoolError`` for a bad ``path`` and for a single spool that cannot be replayed (still in use, already
    replayed, no store to send it to), ``TrackingUnavailableError`` (before anything of it is sent) when its
    store does not answer. In a workdir each spool's error is its line (a live run's spool: ``in_use``), and the
    next spool is tried.
    """
    folders, _ = spool_folders(path)
    single = (Path(path) / RECORDS_FILE).is_file()
    answered: set[str] = set()
    down: dict[str, str] = {}  # stores that did not answer: not probed again for the next spools
    try:
        fallback_uri: str | None = replay_tracking_uri(path, None, env or {})
    except SpoolError:  # not in a workdir, and no MLFLOW_TRACKING_URI: only spools that name their store
        fallback_uri = None
    for folder in folders:
        recorded = uri = None
        try:
            state = inspect_spool(folder)
            if not single and state.replayed is not None and not force:
                continue
            if not single and state.owner is not None and not force:
                raise SpoolInUseError(f"its run ({state.owner}) is still running: not replayed")
            recorded = state.header.get("tracking_uri")
            uri = tracking_uri or recorded_uri(state) or fallback_uri
            if uri is None:
                raise SpoolError(
                    f"{folder}: the spool names no store a replay can log in to: name it with --tracking-uri"
                )
            if uri not in answered:
                detail = down.get(uri)
                if detail is None:
                    status = check_tracking(uri, timeout_s)
                    detail = None if status.ok else down.setdefault(uri, status.detail)
                if detail is not None:
                    raise TrackingUnavailableError(f"cannot replay {folder}: {detail}")
                answered.add(uri)
            result = replay_offline(folder, uri, timeout_s=timeout_s, force=force)
        except MedsegError as exc:
            if single:
                raise
            yield SpoolReplay(folder, skipped=str(exc), in_use=isinstance(exc, SpoolInUseError))
            continue
        target = redact_uri(uri)
        yield SpoolReplay(folder, result, recorded_for=recorded if recorded and recorded != target else None)


def unsent_spools(root: str | Path) -> list[SpoolState]:
    """Spools under ``root`` (a workdir's ``mlflow-offline``) that hold unsent calls and were not replayed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if (p / RECORDS_FILE).is_file()):
        try:
            state = inspect_spool(folder)
        except SpoolError as exc:
            logger.warning("%s", exc)
            continue
        if state.replayed is None and state.owner is None and (state.interrupted or state.unsent):
            found.append(state)
    return found


def warn_unsent_spools(workdir: str | Path) -> list[Path]:
    """Log one WARNING naming the interrupted (and other unsent) spools of a training workdir; nothing is sent."""
    states = unsent_spools(Path(workdir) / SPOOL_ROOT)
    if states:
        interrupted = [s.folder.name for s in states if s.interrupted]
        others = [s.folder.name for s in states if not s.interrupted]
        parts = [f"{len(interrupted)} interrupted run(s) ({', '.join(interrupted)})"] if interrupted else []
        parts += (
            [f"{len(others)} run(s) that ended with calls unsent ({', '.join(others)})"] if others else []
        )
        logger.warning(
            "tracking: %s in %s were not sent to MLflow; send them with `medseg replay %s`",
            " and ".join(parts),
            Path(workdir) / SPOOL_ROOT,
            workdir,
        )
    return [s.folder for s in states]
