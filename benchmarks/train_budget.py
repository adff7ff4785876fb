"""Wall-clock budget benchmark: `medseg train --set train.budget_minutes=M` on the synthetic perfusion demo.

Writes the demo's training set (20 CBF/MTT/CBV phantoms of 64x64x24, as `medseg demo` does), then runs the real
command in a child process::

    medseg train --config configs/demo.yaml --datalist DATA/dataset.json --workdir WORKDIR/train
                 --set train.budget_minutes=M --set train.epochs=10000

``train.epochs`` is raised so that the budget, not the demo's 24 epochs, ends the run (with a budget, epochs are
an upper bound). The command's progress lines stream to stderr. Reported from its JSON summary and checkpoints:

* the training time (the loop: epochs, validations, checkpoints; what the budget limits) against the budget, as a
  ratio (goal: within 1 +- 0.10), and the command's whole wall time (imports, data caching, MLflow, registration);
* epochs and steps run, why the run stopped, the learning rate of the first and last steps' epochs and the final
  learning rate in ``last.pt`` (goal: 0, the end of the poly schedule);
* the registered model URI and the best validation Dice.

Usage: ``python benchmarks/train_budget.py [--budget-minutes 2] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
TOLERANCE = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=10000, help="upper bound on epochs (default 10000)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    from medseg.checkpoint import load_checkpoint
    from medseg.synthetic.dataset import write_perfusion_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-budget-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset = write_perfusion_dataset(work / "data", 20, seed=0)
    cmd = [
        sys.executable, "-m", "medseg.cli", "train", "--config", str(REPO / "configs" / "demo.yaml"),
        "--datalist", str(dataset), "--workdir", str(work / "train"),
        "--set", f"train.budget_minutes={args.budget_minutes}", "--set", f"train.epochs={args.epochs}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the run's own SQLite store
    print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        print(f"medseg train failed with exit status {run.returncode}:\n{run.stdout}", file=sys.stderr)
        return 1
    summary = json.loads(run.stdout)
    last = load_checkpoint(work / "train" / "checkpoints" / "last.pt")
    history = last.extra["history"]
    budget_s = 60.0 * args.budget_minutes
    ratio = summary["train_seconds"] / budget_s
    final_lr = float(last.optimizer["param_groups"][0]["lr"])
    steps = int(sum(h["train/steps"] for h in history))
    ok_time = abs(ratio - 1.0) <= TOLERANCE
    ok_lr = final_lr == 0.0
    ok_reg = bool(summary["model_uri"])

    print(f"budget                 {budget_s:8.1f} s ({args.budget_minutes:g} min)")
    print(f"training time          {summary['train_seconds']:8.1f} s  ratio {ratio:.3f} "
          f"(goal 1 +- {TOLERANCE:.2f}: {'PASS' if ok_time else 'FAIL'})")
    print(f"command wall time      {wall:8.1f} s  (imports, data caching, MLflow set-up and registration included)")
    print(f"epochs / steps         {summary['epochs_run']} / {steps}  stopped by {summary['stopped_by']}")
    print(f"lr, first epoch's end  {history[0]['train/lr']:.3e}  (base {last.spec.config['train']['lr']:g})")
    print(f"lr, last epoch's end   {history[-1]['train/lr']:.3e}")
    print(f"final lr (last.pt)     {final_lr:.3e}  ({'PASS' if ok_lr else 'FAIL'}: the poly schedule ends at 0)")
    print(f"best val Dice          {summary['best_metrics'].get('val/dice_mean', float('nan')):.4f} "
          f"at epoch {summary['best_epoch']} (0-based)")
    print(f"registered             {summary['model_uri']}  ({'PASS' if ok_reg else 'FAIL'})")
    return 0 if ok_time and ok_lr and ok_reg else 1


if __name__ == "__main__":
    sys.exit(main())
