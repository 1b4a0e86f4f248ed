"""`retrieval ingest` in a child process, observable and stoppable at chosen points (for test_interrupt.py).

`run()` is the child's whole life: it sends stdout and stderr to a log file, then runs the real command
line (retrieval_cli.main.app) with these test-only patches, none of which changes what an ingest does:

- each progress call and each finished checkpoint is written to the log as one line, so the parent can
  pick its moment from what the child has done ("progress ingest DONE TOTAL", "checkpoint N");
- the ingest checkpoints every `every` files instead of every 2,000, so a small run has several;
- `pause="manifest"` makes checkpoint `pause_at` stop just before the vector store switches to its new
  generation (every file of it written), `pause="commit"` just after the switch, before the database
  commits; the child logs "paused manifest" / "paused commit" and waits to be killed;
- `delay` seconds of sleep after each file keep a small run going while the parent acts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import retrieval.ingest.pipeline
import retrieval.vectors.hnsw.fileformat
from retrieval.ingest.pipeline import Ingestor, IngestProgress


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _wait_to_be_killed(what: str) -> None:
    _say(f"paused {what}")
    while True:
        time.sleep(1)


def run(
    argv: list[str], log: str, *, every: int, pause: str | None = None, pause_at: int = 1, delay: float = 0.0
) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)

    class ObservedIngestor(Ingestor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            inner = kwargs.get("progress")

            def progress(p: IngestProgress) -> None:
                _say(f"progress {p.phase} {p.done} {p.total}")
                if delay and p.phase == "ingest" and p.done:
                    time.sleep(delay)
                if inner is not None:
                    inner(p)  # the engine's wrapper: where a Ctrl-C request turns into KeyboardInterrupt

            super().__init__(*args, **{**kwargs, "progress": progress, "checkpoint_every": every})
            self.checkpoints = 0

        def _checkpoint(self, s: Any) -> None:
            self.checkpoints += 1
            if pause == "manifest" and self.checkpoints == pause_at:
                retrieval.vectors.hnsw.fileformat.write_manifest = lambda *_a: _wait_to_be_killed("manifest")
            elif pause == "commit" and self.checkpoints == pause_at:
                save = self.store.save
                self.store.save = lambda: (save(), _wait_to_be_killed("commit"))  # type: ignore[method-assign]
            super()._checkpoint(s)
            _say(f"checkpoint {self.checkpoints}")

    retrieval.ingest.pipeline.Ingestor = ObservedIngestor  # type: ignore[misc]  # the engine imports it per ingest
    from retrieval_cli.main import app

    try:
        app(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
