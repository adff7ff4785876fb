"""The ``medseg`` command: a thin layer that parses arguments and calls the library.

Heavy imports (torch, MONAI, SimpleITK, mlflow) happen inside the subcommand that needs them so that
``medseg --help`` stays fast. Errors about the user's input are printed as one line with their reason code
and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from medseg.cli_segment import add_segment_args, cmd_segment
from medseg.exit_codes import EXIT_FAILED, EXIT_INPUT, EXIT_OK


def _series_rule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM series selection (when a folder holds several series)")
    g.add_argument("--modality", help="required Modality, e.g. CT or MR")
    g.add_argument("--description", help="regular expression matched against SeriesDescription")
    g.add_argument("--image-type", action="append", default=None, help="token required in ImageType (repeatable)")
    g.add_argument("--min-slices", type=int, default=None,
                   help="minimum number of slices (convert: default 3, below it a series is NOT_VOLUME)")


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

    for line in describe_path(Path(args.path), show_descriptions=args.show_descriptions):
        print(line)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from medseg.data.convert import convert_to_nifti

    out = convert_to_nifti(
        Path(args.path), Path(args.output), series_rule=_series_rule(args), overwrite=args.force,
        min_slices=args.min_slices,
    )
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


def _train_rank_args(args: argparse.Namespace) -> list[str]:
    """The ``medseg train`` options of one rank of a ``--nproc`` launch (everything but ``--nproc``)."""
    out = ["-v"] * args.verbose + ["--config", args.config]
    for item in args.set:
        out += ["--set", item]
    for flag, value in (("--workdir", args.workdir), ("--datalist", args.datalist), ("--plan", args.plan),
                        ("--tracking-uri", args.tracking_uri)):
        if value is not None:
            out += [flag, str(value)]
    for flag, on in (("--resume", args.resume), ("--no-register", args.no_register), ("--quiet", args.quiet)):
        if on:
            out.append(flag)
    return out


def _show_rank_in_logs(rank: int) -> None:
    """Log lines name the rank; ranks other than 0 show warnings and errors only (rank 0 reports the run)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s [rank {rank}] %(name)s: %(message)s"))
    if rank != 0:
        logging.getLogger("medseg").setLevel(max(logging.WARNING, logging.getLogger("medseg").level))


def cmd_train(args: argparse.Namespace) -> int:
    import json
    import os

    from medseg.config import load_config
    from medseg.launch import launch_torchrun, launched_by_torchrun
    from medseg.tracking import redact_uri, resolve_tracking_uri

    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    ranked = launched_by_torchrun(os.environ)
    if ranked and args.nproc is not None and args.nproc != int(os.environ["WORLD_SIZE"]):
        raise ValueError(f"--nproc {args.nproc} under torchrun, which started {os.environ['WORLD_SIZE']} processes: "
                         "leave --nproc out (torchrun's --nproc-per-node decides)")
    config = load_config(args.config, args.set, [args.plan] if args.plan else [])
    if not ranked and (args.nproc or 1) > 1:  # this process only launches the ranks: no torch import here
        return EXIT_OK if launch_torchrun(args.nproc, _train_rank_args(args)) == 0 else EXIT_FAILED
    from medseg.training.distributed import LOCAL, process_group
    from medseg.workflows import describe, train_and_register

    workdir = Path(args.workdir or Path("runs") / config.name)
    tracking_uri = resolve_tracking_uri(args.tracking_uri or config.tracking.uri, os.environ, workdir)
    group = process_group(os.environ, config.train.device) if ranked else contextlib.nullcontext(LOCAL)
    with group as dist:
        if dist.active:
            _show_rank_in_logs(dist.rank)
        observers = []
        if not args.quiet and dist.is_main:
            from medseg.training.progress import ConsoleProgress

            observers.append(ConsoleProgress())
        result = train_and_register(
            config, workdir, tracking_uri=tracking_uri, resume=args.resume, datalist=args.datalist,
            register=not args.no_register, observers=observers, distributed=dist if ranked else None,
        )
    if not dist.is_main:
        return EXIT_OK if result.train.status == "completed" else EXIT_FAILED
    summary = dict(describe(result))
    summary["tracking_uri"] = redact_uri(summary["tracking_uri"])
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK if result.train.succeeded else 1


def cmd_plan(args: argparse.Namespace) -> int:
    from medseg.planning import make_plan, parse_modalities, plan_table

    result = make_plan(
        args.datalist, args.out, config_path=args.config, overrides=args.set, device=args.device,
        budget_minutes=args.budget_minutes, modalities=parse_modalities(args.modality),
        max_step_seconds=args.max_step_seconds, calibration_steps=args.calibration_steps,
        calibrate=not args.no_calibrate,
    )
    print(plan_table(result.plan.decisions))
    print(f"wrote {result.plan_path} and {result.fingerprint_path}")
    return EXIT_OK


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


def cmd_report(args: argparse.Namespace) -> int:
    from medseg.batch.review import rebuild_review_page

    print(f"wrote {rebuild_review_page(Path(args.output))}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    import os

    from medseg.tracking import TrackingUnavailableError
    from medseg.tracking.spools import replay_spools

    lines = skipped = 0
    try:
        for outcome in replay_spools(args.path, args.tracking_uri, env=os.environ, force=args.force):
            print(outcome.line())
            lines, skipped = lines + 1, skipped + (outcome.result is None and not outcome.in_use)
    except TrackingUnavailableError as exc:  # the store is down: nothing (more) sent, nothing marked replayed
        print(f"medseg replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not lines:
        print(f"{args.path}: nothing to replay (no spool with unsent calls that was not replayed)")
    return EXIT_FAILED if skipped else EXIT_OK


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
    from medseg.training.progress import ConsoleProgress

    result = run_demo(out, env=os.environ, tracking_uri=args.tracking_uri, seed=args.seed,
                      observers=[ConsoleProgress()])
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
    p.add_argument("--show-descriptions", action="store_true",
                   help="also show SeriesDescription (free text that can hold identifiers)")
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
    p.add_argument("--plan", default=None, metavar="PLAN.yaml",
                   help="a `medseg plan` overlay, merged over the config before --set")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no epoch/validation lines (warnings and the final JSON only)")
    p.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: tracking.uri, $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlruns.db)",
    )
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel training in N processes on this machine through torchrun (one GPU each on "
                   "CUDA); the global batch is train.batch_size x N. Several machines: torchrun -m medseg.train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "plan", help="fingerprint a datalist and plan spacing, patch, network, batch, normalization and epochs",
        description="Writes OUT (a config overlay for `medseg train --plan OUT`) and fingerprint.json beside it, "
        "and prints each choice with its reason. The rules follow nnU-Net's planner; see medseg.planning.rules.",
    )
    p.add_argument("datalist", help="folder layout, CSV or JSON datalist")
    p.add_argument("--out", required=True, help="the plan to write (YAML)")
    p.add_argument("--config", default=None,
                   help="base config (data contract, network, loss); default: channels and labels from the datalist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config value")
    p.add_argument("--device", default=None, help="auto, cpu or cuda:N (default: the config's train.device)")
    p.add_argument("--budget-minutes", type=float, default=None, help="training time budget: sets train.epochs")
    p.add_argument("--modality", action="append", default=[], metavar="CHANNEL=MOD",
                   help="the modality of a channel (CT, MR or other), e.g. CT=CT (repeatable)")
    p.add_argument("--max-step-seconds", type=float, default=None,
                   help="step-time limit for the patch search (default: 2 on CPU, none on CUDA)")
    p.add_argument("--calibration-steps", type=int, default=3, help="timed training steps (default 3)")
    p.add_argument("--no-calibrate", action="store_true", help="skip the step-time measurement")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "segment", help="segment a study, a series or a whole archive (resumable; outputs in the input geometry)",
        description="Run it again after an interruption: complete, unchanged outputs are skipped. Exit status: 0 "
        "when every item is DONE or QUARANTINED, 1 when some FAILED (run again to retry), 2 for bad input.",
    )
    add_segment_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "report", help="rebuild OUTPUT/report.html, the review page of a batch run, without running inference"
    )
    p.add_argument("output", help="the output folder of `medseg segment`")
    p.set_defaults(func=cmd_report)

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

    p = sub.add_parser(
        "replay", help="send what a training run could not log (its offline spool) to MLflow",
        description="PATH is a spool folder (WORKDIR/mlflow-offline/<run>) or a training workdir (then every spool "
        "of WORKDIR/mlflow-offline not replayed yet). Only calls that never reached the store are sent, and values "
        "the run already has are skipped; a run that was killed is closed as KILLED. Exit status: 0 when done, 1 "
        "when the store does not answer (nothing marked replayed) or a spool was skipped, 2 for a bad PATH.",
    )
    p.add_argument("path", help="a spool folder, or a training workdir")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the store each run was tracked at; else the workdir "
                   "config's tracking.uri, $MLFLOW_TRACKING_URI, sqlite:///WORKDIR/mlruns.db)")
    p.add_argument("--force", action="store_true",
                   help="replay spools already replayed, resending every call (what the run has is skipped)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("register", help="register a run's logged model in the MLflow registry and set an alias")
    p.add_argument("run_id", help="MLflow run id of a training run")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", default="champion", help="alias to point at the new version (default: champion)")
    _tracking_args(p)
    p.set_defaults(func=cmd_register)
    return parser


#: third-party loggers kept at WARNING unless -vv (MLflow's database set-up would drown medseg's lines)
NOISY_LOGGERS = ("mlflow", "alembic", "huey", "sqlalchemy", "urllib3", "matplotlib", "PIL", "git")


def _log_level(args: argparse.Namespace) -> int:
    """WARNING by default, INFO for the long jobs `train` and `demo` (their progress lines; WARNING with --quiet);
    each -v one step more."""
    long_job = args.command in ("train", "demo")
    base = logging.INFO if long_job and not getattr(args, "quiet", False) else logging.WARNING
    return max(logging.DEBUG, base - 10 * args.verbose)


def _quiet_third_party(verbose: int) -> None:
    import os

    if verbose >= 2:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    for name in NOISY_LOGGERS:  # and for a process that imported it already
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = _log_level(args)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    medseg_logger = logging.getLogger("medseg")
    previous_level = medseg_logger.level
    medseg_logger.setLevel(level)  # also when the root logger was configured before (pipelines, notebooks)
    _quiet_third_party(args.verbose)
    from medseg.errors import MedsegError

    try:
        return int(args.func(args))
    except (MedsegError, FileExistsError, ValueError) as exc:
        logging.getLogger("medseg.cli").debug("details", exc_info=True)
        print(f"medseg {args.command}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        medseg_logger.setLevel(previous_level)  # a caller's own logging set-up is left as it was


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
