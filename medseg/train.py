"""``python -m medseg.train ARGS`` is ``medseg train ARGS``: the module each rank of a torchrun launch runs.

Run it yourself under torchrun, e.g. on one machine with 4 GPUs::

    torchrun --standalone --nproc-per-node 4 -m medseg.train --config configs/perfusion.yaml

(``medseg train --nproc 4 --config ...`` does the same). The global batch is ``train.batch_size x`` the number of
processes. ``-v``/``-vv`` are accepted as for ``medseg -v train``. (This module is the command; the library is
:mod:`medseg.training`.)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    from medseg.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    verbose = [a for a in args if re.fullmatch(r"-v+|--verbose", a)]
    rest = [a for a in args if a not in verbose]
    return int(record(cli_main)([*verbose, "train", *rest]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
