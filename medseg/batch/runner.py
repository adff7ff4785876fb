"""``segment_archive``: segment every study under an input, resumably, and account for every series.

A run:

1. locks the output folder, removes temp files/folders a killed run left there, reads (or creates) the naming key;
2. loads the model once (per worker) and discovers the work items (:mod:`medseg.batch.discover`);
3. syncs the ledger (:mod:`medseg.batch.ledger`): new items become ``PENDING`` (or ``QUARANTINED`` with their reason
   code); a ``DONE`` row counts as done only while its output files exist and match their recorded sha256 (and
   cover the requested formats), otherwise it is redone;
4. processes the rest (:mod:`medseg.batch.process`): the next item is read in a background thread while the current
   one is computed; outputs go to a temp folder that is renamed into place; bad inputs are quarantined and the run
   goes on; unexpected errors mark the item ``FAILED`` (retried by the next run);
5. writes ``batch-report.json`` / ``batch-report.csv`` (keys, statuses, codes; no paths), ``quarantine.csv``
   (the relative paths of quarantined and failed items, for the user) and the review page ``report.html``
   (:mod:`medseg.batch.review`), and returns a :class:`BatchSummary`.

Privacy: output names and ledger keys are keyed hashes of UIDs (or of relative paths for files without UIDs); logs
name items by key and reason code only; input paths appear only in ``quarantine.csv``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.batch.deadline import parse_case_timeout
from medseg.batch.discover import Discovery, WorkItem, discover
from medseg.batch.ledger import LEDGER_FILE, Ledger
from medseg.batch.ledger_db import LedgerError, Status
from medseg.batch.naming import keyed_name, load_or_create_key
from medseg.batch.preflight import check_formats, check_model, check_paths
from medseg.batch.process import ItemOutcome, RunContext, run_items
from medseg.batch.progress import ProgressBar
from medseg.batch.provenance import batch_provenance, earlier_fingerprints, run_fingerprint
from medseg.batch.publish import clean_stale_temps, folder_matches, lock_output
from medseg.batch.report import BatchSummary, QuarantineEntry, write_reports
from medseg.batch.review import write_review_page
from medseg.errors import ConfigError, InputError, ReasonCode
from medseg.inference.options import InferenceOptions

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FORMATS", "ScaleOut", "segment_archive"]

DEFAULT_FORMATS = ("nifti", "seg", "report", "qc")
_CREATED_META = "seg_created"


@dataclass(frozen=True)
class ScaleOut:
    """Where a run computes besides this process (see :func:`segment_archive`'s ``workers`` and ``device``).

    Attributes:
        ray: run on Ray (:mod:`medseg.batch.cluster`): ``"auto"`` (the cluster this machine belongs to), an address
            (``HOST:PORT`` or ``ray://HOST:PORT``), ``"local"`` or ``"local:N"`` (a new Ray instance on this machine
            with N CPUs); None: worker processes on this machine. Needs ``pip install medseg[ray]``.
        worker_setup: a picklable callable run in every worker process / Ray actor before it loads the model, e.g.
            to register a custom network in :data:`medseg.nets.registry.NETWORKS`.
        case_timeout: the per-case time limit of worker processes and Ray actors (:mod:`medseg.batch.deadline`):
            ``"auto"`` (max(600 s, 20 x the run's median case time); only where workers or Ray run the cases), a
            number of seconds (also makes a one-worker run compute in a worker process) or None (no limit). A
            worker past it is killed, its case ``FAILED`` (``WorkerTimeout``, retried by the next run), and replaced.
    """

    ray: str | None = None
    worker_setup: Callable[[], None] | None = None
    case_timeout: float | str | None = "auto"


def _predictor(
    model: Any, options: InferenceOptions, *, tracking_uri: str | None, remote: bool
) -> tuple[Any, Any]:
    """``(predictor, model source for worker processes or None)``; the model was checked by
    :func:`~medseg.batch.preflight.check_model`."""
    from medseg.batch.workers import ModelSource

    if not isinstance(model, str | os.PathLike):
        return model, None
    if tracking_uri is None and str(model).startswith(("models:/", "runs:/")):
        from medseg.tracking.store import ambient_tracking_uri

        tracking_uri = ambient_tracking_uri()  # resolved once here, so workers and Ray actors on other nodes get it
    source = ModelSource(str(model), tracking_uri, options)
    if remote:  # worker processes or Ray actors compute; the parent only needs the spec and the weights' hash
        predictor = source.on("cpu").load()
        return predictor, _pinned(source, predictor)
    return source.load(), None


def _pinned(source: Any, predictor: Any) -> Any:
    """``source`` naming the registered version the parent resolved (``models:/NAME/VERSION``), so that every worker
    loads that version even if an alias such as ``@champion`` moves while the run goes on."""
    name, version = getattr(predictor, "model_name", None), getattr(predictor, "model_version", None)
    if not str(source.uri).startswith("models:/") or name is None or version is None:
        return source
    return dataclasses.replace(source, uri=f"models:/{name}/{version}")


def _plan(
    items: Sequence[WorkItem], ledger: Ledger, output: Path, formats: Sequence[str]
) -> tuple[list[WorkItem], int, int]:
    """Items to compute now, DONE items kept, DONE items to redo (outputs missing/altered or formats missing)."""
    todo: list[WorkItem] = []
    kept = redo = 0
    for item in items:
        if item.quarantined:
            continue
        row = ledger.get(item.key)
        if row is not None and row.status == Status.DONE:
            changed = row.input_fingerprint is not None and row.input_fingerprint != item.input_fingerprint()
            if (
                not changed
                and row.output
                and set(formats) <= set(row.formats)
                and folder_matches(output / row.output, row.checksums)
            ):
                kept += 1
                continue
            logger.warning(
                "item %s: %s; computing it again",
                item.key,
                "its input changed since it was segmented" if changed
                else "outputs missing, altered or lacking a format",
            )
            ledger.mark_pending(item.key)
            redo += 1
        todo.append(item)
    return todo, kept, redo


def _discovery_quarantine(found: Discovery) -> list[QuarantineEntry]:
    entries = []
    for item in found.items:
        if item.problem is not None:
            p = item.problem
            logger.info("item %s: QUARANTINED [%s]", item.key, p.code.value)
            entries.append(
                QuarantineEntry(
                    key=item.key,
                    kind=item.kind.value,
                    status=Status.QUARANTINED.value,
                    reason=p.code.value,
                    item_path=item.relative_path,
                    problem_path=p.path or item.relative_path,
                    detail=p.detail,
                )
            )
    return entries


def _seg_created(ledger: Ledger) -> _dt.datetime:
    """The creation time stamped into this output folder's SEGs: fixed at the first run (see RunContext)."""
    now = _dt.datetime.now().replace(microsecond=0).isoformat()
    return _dt.datetime.fromisoformat(ledger.meta_default(_CREATED_META, now))


def segment_archive(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: Any,
    options: InferenceOptions | None = None,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    workers: int | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    name_key: bytes | None = None,
    scale: ScaleOut | None = None,
) -> BatchSummary:
    """Segment every series / case under ``input`` into ``output``; resumable and safe to kill at any moment.

    Args:
        input: a NIfTI file, a DICOM series folder, a study folder or a tree of studies (or of NIfTI case folders).
        output: the output folder (created); one sub-folder per item named by its key, plus the ledger and reports.
        model: a model URI (``models:/NAME@ALIAS``, ``runs:/...``), a checkpoint path, or a ready
            :class:`~medseg.inference.Predictor`.
        options: how to run the model when loading it from a URI (:class:`~medseg.inference.InferenceOptions`:
            device, TTA, window, crop, postprocessing; default: the model's own settings). Its ``device``:
            ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; with several workers, ``cuda`` (and ``auto`` on a
            machine with GPUs) spreads them over the visible GPUs (worker i on ``cuda:{i % n}``) and a
            comma-separated list (``"cuda:0,cuda:2"``) pins them in turn (:mod:`medseg.batch.devices`). On Ray:
            ``auto``, ``cuda`` or ``cpu`` (Ray gives each actor its GPU).
        formats: outputs per case, any of ``("nifti", "seg", "report", "qc")``.
        workers: processes, each with its own copy of the model (needs a URI / path), fed from one queue; None: 1.
            On Ray, the number of actors (None: one per GPU of the cluster, or one per CPU when it has none).
        tracking_uri: MLflow tracking URI for ``models:/`` and ``runs:/`` URIs (default: MLflow's own, from
            ``mlflow.set_tracking_uri`` or ``MLFLOW_TRACKING_URI``; resolved once and passed to every worker).
        progress: draw a progress bar on stderr (only when stderr is a terminal).
        name_key: the naming key (default: the output folder's own key, created on first use).
        scale: run on a Ray cluster, and a set-up hook for workers (:class:`ScaleOut`).

    Returns:
        A :class:`BatchSummary` (``summary.table()`` for people, ``summary.reports`` for the report files).

    Raises:
        ConfigError: invalid arguments, or an output folder that holds results of another model or naming key.
        medseg.batch.publish.OutputLockedError: another run is writing to ``output``.
        InputError: ``input`` does not exist.
    """
    start = time.perf_counter()
    input_path, out = Path(input).absolute(), Path(output).absolute()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    scale = scale or ScaleOut()
    fmt = check_formats(formats)
    stoppable = _fixed_timeout(scale)  # a fixed case time limit: even one worker computes in a worker process
    if stoppable and not isinstance(model, str | os.PathLike):
        raise ConfigError("case_timeout: a fixed limit needs a model URI or checkpoint path (cases run in a worker)")
    check_model(model, options, workers=workers or 1, ray=scale.ray is not None)
    options = options if options is not None else InferenceOptions()
    device = options.device
    ray_target = _check_ray(scale, device)
    uri = isinstance(model, str | os.PathLike)
    devices = _local_devices(device, workers or 1) if ray_target is None and uri else None
    if not input_path.exists():
        raise InputError(ReasonCode.FILE_NOT_FOUND, None, "the batch input does not exist")
    check_paths(input_path, out)
    # the model (and its settings) is checked before anything is written: a bad model leaves no output folder
    predictor, source = _predictor(
        model,
        options.replace(device=devices[0] if devices else "cpu"),
        tracking_uri=tracking_uri,
        remote=ray_target is not None or (workers or 1) > 1 or stoppable,
    )
    provenance = batch_provenance(predictor)
    out.mkdir(parents=True, exist_ok=True)
    with lock_output(out):
        clean_stale_temps(out)
        key = name_key if name_key is not None else load_or_create_key(out)
        with Ledger.open(out / LEDGER_FILE) as ledger:
            _bind(ledger, "name_key_check", keyed_name(key, "medseg-ledger-key-check"), "naming key")
            _bind(
                ledger,
                "model_fingerprint",
                run_fingerprint(predictor, provenance),
                "model or inference settings (tta, overlap, crop, postprocess)",
                earlier=earlier_fingerprints(predictor, provenance),
            )
            found = discover(input_path, predictor.spec.contract.channels, key, exclude=[out])
            job = _Job(
                found,
                predictor,
                source,
                out,
                key,
                provenance,
                fmt,
                workers,
                progress,
                start,
                devices=devices,
                device=device,
                ray=ray_target,
                scale=scale,
            )
            return _run(job, ledger)


def _fixed_timeout(scale: ScaleOut) -> bool:
    """True when ``scale`` sets a fixed case time limit (checked: a bad value raises ConfigError)."""
    timeout = parse_case_timeout(scale.case_timeout)
    return timeout is not None and not timeout.auto


def _check_ray(scale: ScaleOut, device: str) -> Any:
    """The parsed ``scale.ray`` target (None for a local run); Ray must be installed (checked before any work)."""
    if scale.ray is None:
        return None
    from medseg.batch.cluster import check_device, import_ray, parse_ray

    target = parse_ray(scale.ray)
    check_device(device)
    import_ray()
    return target


def _local_devices(device: str, workers: int) -> list[str]:
    import torch

    from medseg.batch.devices import worker_devices

    return worker_devices(device, workers, torch.cuda.device_count())


def _bind(ledger: Ledger, name: str, value: str, what: str, earlier: Sequence[str] = ()) -> None:
    try:
        ledger.bind(name, value, what, earlier)
    except LedgerError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class _Job:
    """A run's inputs once the model is loaded and the items discovered."""

    found: Discovery
    predictor: Any
    source: Any  # a workers.ModelSource when worker processes load the model themselves
    output: Path
    key: bytes
    provenance: dict[str, Any]
    formats: tuple[str, ...]
    workers: int | None
    progress: bool
    started: float
    devices: list[str] | None = None  # one per local worker
    device: str = "auto"  # the --device value (for Ray actors)
    ray: Any = None  # a cluster.RayTarget when the run goes to Ray
    scale: ScaleOut = ScaleOut()


def _run(job: _Job, ledger: Ledger) -> BatchSummary:
    from medseg._version import __version__
    from medseg.batch.workers import run_in_workers

    found, out, formats = job.found, job.output, job.formats
    settings: dict[str, Any] = {"formats": list(formats), "workers": job.workers or 1}
    if job.ray is not None:
        settings.update(workers=job.workers, ray=job.scale.ray)
    elif job.devices and len(set(job.devices)) > 1:
        settings["devices"] = job.devices
    run_id = ledger.begin_run(__version__, settings)
    ledger.sync(
        ((it.key, it.kind.value, it.problem.code.value if it.problem else None) for it in found.items), run_id
    )
    quarantine = _discovery_quarantine(found)
    todo, kept, redo = _plan(found.items, ledger, out, formats)
    ctx = RunContext(found.root, out, formats, job.provenance, job.key, _seg_created(ledger))
    summary = BatchSummary(output=out, run_id=run_id, items=[], already_done=kept, redone=redo)
    logger.info(
        "run %d: %d item(s), %d already done, %d to compute, %d quarantined at discovery",
        run_id,
        len(found.items),
        kept,
        len(todo),
        len(quarantine),
    )
    bar = ProgressBar(len(todo), enabled=job.progress)

    def on_outcome(outcome: ItemOutcome) -> None:
        if outcome.quarantine is not None:
            quarantine.append(outcome.quarantine)
        if outcome.status == Status.DONE:
            summary.processed += 1
        bar.update(outcome.status.value)

    try:
        with bar:
            if job.ray is not None:
                from medseg.batch.cluster import run_on_ray

                run_on_ray(
                    todo,
                    job.source,
                    ctx,
                    ledger,
                    on_outcome,
                    target=job.ray,
                    device=job.device,
                    workers=job.workers,
                    setup=job.scale.worker_setup,
                    timeout=parse_case_timeout(job.scale.case_timeout),
                )
            elif job.source is None or ((job.workers or 1) == 1 and not _fixed_timeout(job.scale)):
                run_items(todo, job.predictor, ledger, ctx, on_outcome)
            else:
                run_in_workers(
                    todo,
                    job.source,
                    ctx,
                    ledger,
                    job.workers or 1,
                    on_outcome,
                    devices=job.devices,
                    setup=job.scale.worker_setup,
                    timeout=parse_case_timeout(job.scale.case_timeout),
                )
    finally:
        summary.items = ledger.rows(run_id=run_id)
        summary.seconds = time.perf_counter() - job.started
        ledger.end_run(run_id, summary.counts())
        summary.reports = write_reports(
            summary, provenance=job.provenance, settings=settings, quarantine=quarantine
        )
        try:  # the run's results stand without the page: a failure here is logged, not raised over them
            summary.reports["html"] = write_review_page(out, ledger, run_id)
        except Exception:
            logger.exception("could not write the review page; rebuild it with `medseg report OUTPUT`")
        for line in summary.table().splitlines():
            logger.info("%s", line)
    return summary
