"""The ``medseg`` command: a thin layer that parses arguments and calls the library.

Heavy imports (torch, MONAI, SimpleITK, mlflow) happen inside the subcommand that needs them so that
``medseg --help`` stays fast. Errors about the user's input are printed as one line with their reason code
and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_INPUT = 2


def _series_rule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM series selection (when a folder holds several series)")
    g.add_argument("--modality", help="required Modality, e.g. CT or MR")
    g.add_argument("--description", help="regular expression matched against SeriesDescription")
    g.add_argument("--image-type", action="append", default=None, help="token required in ImageType (repeatable)")
    g.add_argument("--min-slices", type=int, default=None, help="minimum number of slices")


def _series_rule(args: argparse.Namespace):
    values = {
        "modality": args.modality,
        "description": args.description,
        "image_type": args.image_type,
        "min_slices": args.min_slices,
    }
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    from medseg.data.dicom import SeriesRule

    return SeriesRule.from_dict(values)


def _fmt(values, digits: int = 3) -> str:
    return "x".join(f"{float(v):.{digits}g}" for v in values)


def cmd_info(args: argparse.Namespace) -> int:
    from medseg.data.inspect import describe_path

    for line in describe_path(Path(args.path)):
        print(line)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from medseg.data.convert import convert_to_nifti

    out = convert_to_nifti(Path(args.path), Path(args.output), series_rule=_series_rule(args), overwrite=args.force)
    print(f"wrote {out}")
    return EXIT_OK


def _tracking_uri(args: argparse.Namespace) -> str:
    import os

    from medseg.tracking import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, os.environ, Path(args.workdir))


def cmd_register(args: argparse.Namespace) -> int:
    from medseg.tracking import promote

    info = promote(args.run_id, args.name, args.alias, _tracking_uri(args))
    print(f"registered {info.name} version {info.version}" + (f" with alias '{info.alias}'" if info.alias else ""))
    print(f"model URI: models:/{info.name}/{info.version}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    import json
    import os

    from medseg.config import load_config
    from medseg.tracking import redact_uri, resolve_tracking_uri
    from medseg.workflows import describe, train_and_register

    config = load_config(args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / config.name)
    tracking_uri = resolve_tracking_uri(args.tracking_uri or config.tracking.uri, os.environ, workdir)
    result = train_and_register(
        config, workdir, tracking_uri=tracking_uri, resume=args.resume, datalist=args.datalist,
        register=not args.no_register,
    )
    summary = dict(describe(result))
    summary["tracking_uri"] = redact_uri(summary["tracking_uri"])
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK if result.train.succeeded else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from medseg.evaluate import evaluate, evaluate_folders

    pred, gt = Path(args.pred), Path(args.gt)
    labels = args.labels or None
    if pred.is_dir() and gt.is_dir():
        summary = evaluate_folders(pred, gt, Path(args.out), labels=labels, nsd_tolerance_mm=args.nsd_tolerance)
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    if pred.is_dir() or gt.is_dir():
        raise ValueError("PRED and GT must both be files or both be folders")
    for row in evaluate(pred, gt, labels, args.nsd_tolerance):
        print(json.dumps(row, default=str))
    return EXIT_OK


EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
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
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda:N")
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
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own model copy (default 1)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for models:/ and runs:/ URIs (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def postprocess_arg(args: argparse.Namespace) -> bool | dict[str, object] | None:
    """The ``postprocess`` argument of :func:`medseg.batch.segment_archive` from the command line's options."""
    if args.no_postprocess:
        if args.largest_component is not None or args.min_volume_mm3 is not None:
            raise ValueError("--no-postprocess cannot be combined with --largest-component or --min-volume-mm3")
        return False
    settings: dict[str, object] = {}
    if args.largest_component is not None:
        settings["largest_component"] = list(args.largest_component) or True
    if args.min_volume_mm3 is not None:
        settings["min_volume_mm3"] = args.min_volume_mm3
    return settings or None


def cmd_segment(args: argparse.Namespace) -> int:
    import os

    from medseg.batch import segment_archive
    from medseg.tracking.store import ENV_TRACKING_URI

    # as MLflow's own tools do: --tracking-uri, else $MLFLOW_TRACKING_URI (only models:/ and runs:/ URIs need one)
    tracking_uri = args.tracking_uri or os.environ.get(ENV_TRACKING_URI, "").strip() or None
    try:
        summary = segment_archive(
            args.input, args.output, args.model, device=args.device, tta=args.tta, overlap=args.overlap,
            sw_batch_size=args.sw_batch_size, postprocess=postprocess_arg(args), formats=args.formats,
            workers=args.workers,
            tracking_uri=tracking_uri, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("medseg segment: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.table())
    for name, path in sorted(summary.reports.items()):
        print(f"{name} report: {path}")
    return EXIT_OK if summary.ok else EXIT_FAILED


DEMO_MARKER = ".medseg-demo"


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import shutil

    from medseg.demo import report_lines, run_demo

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            raise FileExistsError(f"{out} exists and is not a medseg demo folder; choose another --out")
        shutil.rmtree(out)  # a previous demo's folder (it carries the marker): start afresh
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("created by medseg demo; `medseg demo` may delete this folder\n")
    result = run_demo(out, env=os.environ, tracking_uri=args.tracking_uri, seed=args.seed)
    for line in report_lines(result):
        if line:
            print(line)
    return EXIT_OK


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlruns.db)",
    )
    p.add_argument("--workdir", default=".", help="folder of the embedded MLflow store (default: current folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="Medical image segmentation pipelines on MONAI.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="list the series / volumes under PATH (no patient identifiers)")
    p.add_argument("path", help="a volume file, a DICOM series folder or a study tree")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="write a DICOM series (or any readable volume) as NIfTI")
    p.add_argument("path", help="a volume file, a DICOM series folder or a study tree")
    p.add_argument("output", help="output .nii or .nii.gz")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _series_rule_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("train", help="train from a YAML config, track the run in MLflow and register the model")
    p.add_argument("--config", required=True, help="YAML config (may name a `base` it overlays)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--datalist", default=None, help="folder layout, CSV or JSON (overrides datalist.path)")
    p.add_argument("--resume", action="store_true", help="continue from WORKDIR/checkpoints/last.pt")
    p.add_argument("--no-register", action="store_true", help="do not register the model in the MLflow registry")
    p.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: tracking.uri, $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlruns.db)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "segment", help="segment a study, a series or a whole archive (resumable; outputs in the input geometry)",
        description="Run it again after an interruption: complete, unchanged outputs are skipped. Exit status: 0 "
        "when every item is DONE or QUARANTINED, 1 when some FAILED (run again to retry), 2 for bad input.",
    )
    add_segment_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="per-case, per-label Dice, HD95 and NSD of predictions against ground truth")
    p.add_argument("pred", help="predicted label file, or a folder of them")
    p.add_argument("gt", help="ground-truth label file, or a folder of them (cases matched by relative path)")
    p.add_argument("--out", default="metrics.csv", help="CSV for folders (a _summary.csv is written beside it)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="label values (default: all present)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="end to end on synthetic data: convert, train + register, segment an archive")
    p.add_argument("--out", default="demo_out", help="working folder (default: demo_out; recreated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow/mlruns.db)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("register", help="register a run's logged model in the MLflow registry and set an alias")
    p.add_argument("run_id", help="MLflow run id of a training run")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", default="champion", help="alias to point at the new version (default: champion)")
    _tracking_args(p)
    p.set_defaults(func=cmd_register)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from medseg.errors import MedsegError

    try:
        return int(args.func(args))
    except (MedsegError, FileExistsError, ValueError) as exc:
        logging.getLogger("medseg.cli").debug("details", exc_info=True)
        print(f"medseg {args.command}: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
