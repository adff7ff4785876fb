"""Exit codes of the ``medseg`` command (shared by :mod:`medseg.cli` and :mod:`medseg.cli_segment`)."""

EXIT_OK = 0  # done (a batch: every item DONE or QUARANTINED)
EXIT_FAILED = 1  # a batch with FAILED items (run again to retry them), or a failed training run
EXIT_INPUT = 2  # a bad argument, config or input
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM
