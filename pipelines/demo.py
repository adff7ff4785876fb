#!/usr/bin/env python
"""The demo that `make demo` runs (the same as `medseg demo`); see medseg/demo.py for its stages.

    python pipelines/demo.py --out demo_out
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg.cli import main as medseg_main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("monai", "mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(medseg_main(["demo", *sys.argv[1:]]))
