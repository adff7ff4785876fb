"""``medseg segment``: its arguments, the :class:`~medseg.inference.InferenceOptions` they make, and the command.

Kept apart from :mod:`medseg.cli` (the parser of every command) because the segment command also owns the SIGTERM
handling of a batch run; ``pipelines/segment_archive.py`` uses the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED

if TYPE_CHECKING:
    from medseg.inference.options import InferenceOptions

SEGMENT_FORMATS = ("nifti", "seg", "report", "qc")


def _formats(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SEGMENT_FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"formats must be a comma-separated list of {', '.join(SEGMENT_FORMATS)}")
    return names


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``medseg segment`` (also used by pipelines/segment_archive.py)."""
    p.add_argument("input", type=Path, help="a NIfTI file, a DICOM series or study folder, or a tree of studies")
    p.add_argument("output", type=Path, help="results folder (created; reused to resume)")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a checkpoint")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present), cpu, cuda (workers spread over the visible GPUs: worker i on "
                   "cuda:i%%n) or cuda:N; a list such as cuda:0,cuda:2 pins the workers in turn")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the model's)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass (default: the model's)")
    p.add_argument("--largest-component", type=int, nargs="*", default=None, metavar="LABEL",
                   help="keep only the largest connected component of these labels (no value: of every label); "
                   "default: the model's setting")
    p.add_argument("--min-volume-mm3", type=float, default=None, metavar="MM3",
                   help="remove objects smaller than this volume in mm^3 (0: none); default: the model's setting")
    p.add_argument("--no-postprocess", action="store_true",
                   help="no postprocessing, whatever the model's settings")
    p.add_argument("--formats", type=_formats, default=SEGMENT_FORMATS,
                   help="outputs, e.g. nifti,seg,report,qc (default all)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes, each with its own model copy, fed from one queue (default 1); with --ray the "
                   "number of actors (default: one per GPU of the cluster, or per CPU without GPUs)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS|local[:N]",
                   help="run on Ray (pip install 'medseg[ray]'): auto (the cluster of this node), an address "
                   "(HOST:PORT, ray://HOST:PORT) or local[:N] (a new Ray instance here with N CPUs); the input and "
                   "output must be on a file system shared by all nodes")
    p.add_argument("--case-timeout", default="auto", metavar="auto|off|SECONDS",
                   help="per-case time limit of worker processes / Ray actors: a worker still on one case after it "
                   "is killed and replaced, the case FAILED (WorkerTimeout) and retried by the next run; auto "
                   "(default): max(600 s, 20x the run's median case time), only with --workers >= 2 or --ray; a "
                   "number of seconds also makes one worker compute in a stoppable process")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for models:/ and runs:/ URIs (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The :class:`~medseg.inference.InferenceOptions` of ``medseg segment``'s command line."""
    from medseg.inference.options import InferenceOptions

    postprocess: bool | dict[str, object] | None
    if args.no_postprocess:
        if args.largest_component is not None or args.min_volume_mm3 is not None:
            raise ValueError("--no-postprocess cannot be combined with --largest-component or --min-volume-mm3")
        postprocess = False
    else:
        settings: dict[str, object] = {}
        if args.largest_component is not None:
            settings["largest_component"] = list(args.largest_component) or True
        if args.min_volume_mm3 is not None:
            settings["min_volume_mm3"] = args.min_volume_mm3
        postprocess = settings or None
    return InferenceOptions(
        device=args.device, tta=args.tta, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
        postprocess=postprocess,
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the run unwinds through its clean-up code."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (a scheduler's or `kill`'s stop) into :class:`_Terminated` for the block.

    Without a handler the process dies at once: the case being written stays a temp folder and the batch
    reports are not updated. Raised as an interrupt, the case in progress rolls back (its temp folder is removed),
    the ledger keeps every finished case and the reports are written.
    """
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_segment(args: argparse.Namespace) -> int:
    from medseg.batch import ScaleOut, segment_archive

    tracking_uri = args.tracking_uri  # None: the run takes MLflow's own ($MLFLOW_TRACKING_URI), as MLflow's tools do
    try:
        with _sigterm_as_interrupt():
            summary = segment_archive(
                args.input, args.output, args.model, inference_options(args), formats=args.formats,
                workers=args.workers,
                tracking_uri=tracking_uri, progress=not args.no_progress,
                scale=ScaleOut(ray=args.ray, case_timeout=args.case_timeout),
            )
    except _Terminated:
        print("medseg segment: terminated (SIGTERM); the case in progress was rolled back and the reports "
              "written; run the same command again to resume", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("medseg segment: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.table())
    for name, path in sorted(summary.reports.items()):
        print(f"{name} report: {path}")
    return EXIT_OK if summary.ok else EXIT_FAILED


