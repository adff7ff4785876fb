"""What a person sees: `medseg train` prints an epoch line (loss, lr, ETA) and a validation line (Dice per label,
best so far) on stderr, a progress bar when asked, nothing of that with --quiet; a budgeted run registers."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import yaml
from test_training_helpers import TINY, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.training.progress import ConsoleProgress, format_seconds

EPOCH_LINE = re.compile(
    r"epoch (\d+)/500  loss \d+\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+\.\d s  elapsed \d+:\d\d  ETA \d+:\d\d"
)
VAL_LINE = re.compile(
    r"validation after epoch (\d+): Dice infarct_core \d\.\d{4} \(mean \d\.\d{4}\)  best \d\.\d{4} at epoch \d+"
)


def _medseg(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "medseg.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_medseg_train_shows_progress_and_quiet_hides_it(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=4)
    config = {**TINY, "datalist": {"path": str(dataset)}, "tracking": {"registered_model": "tiny"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    run = _medseg(
        "train", "--config", "config.yaml", "--workdir", "work",
        "--set", "train.epochs=500", "--set", "train.val_every=2", "--set", "train.budget_minutes=0.05",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    err = run.stderr
    epochs = [int(m.group(1)) for m in EPOCH_LINE.finditer(err)]
    vals = [int(m.group(1)) for m in VAL_LINE.finditer(err)]
    summary = json.loads(run.stdout)
    n = summary["epochs_run"]
    assert epochs == list(range(1, n + 1)) and 1 <= n < 500, err[-3000:]
    assert vals and vals[-1] == n and all(v % 2 == 0 for v in vals[:-1])  # every 2nd epoch, and the last
    assert "training up to 500 epochs within 0.05 min on cpu: 3 training case(s), 1 validation case(s)" in err
    assert f"training finished after {n} epoch(s)" in err and "(stopped by budget)" in err
    assert "alembic" not in err and "INFO mlflow" not in err  # third-party set-up noise stays hidden
    assert summary["status"] == "completed" and summary["stopped_by"] == "budget"
    assert summary["model_uri"] == "models:/tiny@champion"  # the budgeted run registered its model
    last = load_checkpoint(tmp_path / "work" / "checkpoints" / "last.pt")
    assert last.optimizer["param_groups"][0]["lr"] == 0.0 and last.epoch == n - 1

    quiet = _medseg(
        "train", "--config", "config.yaml", "--workdir", "quiet", "--quiet", "--no-register",
        "--set", "train.epochs=1", cwd=tmp_path,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert json.loads(quiet.stdout)["status"] == "completed"
    assert not EPOCH_LINE.search(quiet.stderr) and "epoch 1/1" not in quiet.stderr
    assert "validation after" not in quiet.stderr and "INFO" not in quiet.stderr and "%|" not in quiet.stderr


def test_console_progress_bar_and_lines(caplog):
    out = io.StringIO()
    progress = ConsoleProgress(bar=True, file=out, mininterval=0)
    caplog.set_level("INFO", logger="medseg.training.progress")
    progress.on_start({"config": {"train": {"epochs": 2, "budget_minutes": None}},
                       "dataset": {"n_train": 3, "n_val": 1}, "run": {"device": "cpu", "validation": True}})
    progress.on_epoch_start(0, {"steps": 4, "epochs": 2})
    for step in range(4):
        progress.on_step_end(0, step, {"loss": 0.5 - 0.1 * step, "lr": 0.01, "progress": step / 8,
                                       "eta_seconds": 75.0})
    assert progress._bar.n == 4
    progress.on_epoch_end(0, {"train/loss": 0.35, "train/lr": 0.01, "train/seconds": 2.0,
                              "run/elapsed_seconds": 2.0, "run/eta_seconds": 75.0})
    progress.on_validation(0, {"val/dice/infarct_core": 0.8123, "val/dice_mean": 0.8123,
                               "best/dice_mean": 0.8123, "best/epoch": 0.0}, [])
    progress.on_end(SimpleNamespace(status="completed", history=[{}], best_epoch=0, train_seconds=3723.0,
                                    best_metrics={"val/dice_mean": 0.8123}, stopped_by="epochs",
                                    best_checkpoint="best.pt"))
    bar = out.getvalue()
    assert "epoch 1/2" in bar and "4/4" in bar and "step/s" in bar and "run ETA 1:15" in bar and "loss 0.2000" in bar
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "training 2 epochs on cpu: 3 training case(s), 1 validation case(s)",
        "epoch 1/2  loss 0.3500  lr 1.00e-02  2.0 s  elapsed 0:02  ETA 1:15",
        "validation after epoch 1: Dice infarct_core 0.8123 (mean 0.8123)  best 0.8123 at epoch 1",
        "training finished after 1 epoch(s), 1:02:03 of training (stopped by epochs); best Dice 0.8123 at epoch 1",
    ]
    assert format_seconds(None) == "?" and format_seconds(59.6) == "1:00"
