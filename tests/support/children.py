"""A `retrieval` command line in a child process (tests/support/ingest_child.py), watched through its log.

Children are forked from a forkserver that has imported retrieval once: a fresh interpreter per child would
cost seconds of imports each.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import ingest_child

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["retrieval_cli.main", "support.ingest_child"])


class Child:
    """One command-line child (`ingest`, `watch`) and the lines it has logged."""

    def __init__(self, log: Path, argv: list[str], **options: object) -> None:
        self.log = log
        self.process = _context.Process(target=ingest_child.run, args=(argv, str(log)), kwargs=options)
        self.process.start()

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 60.0) -> str:
        """The first logged line that `wanted` accepts; fails if the child ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if wanted(line):
                    return line
            if not self.process.is_alive():
                pytest.fail(f"child ended ({self.process.exitcode}) first:\n" + "\n".join(self.lines()[-20:]))
            time.sleep(0.005)
        pytest.fail("child too slow:\n" + "\n".join(self.lines()[-20:]))

    def signal(self, sig: int) -> int | None:
        """Send `sig`; the exit code once the child has ended (None if it is still running after 30 s)."""
        os.kill(self.process.pid, sig)
        self.process.join(30)
        return self.process.exitcode

    def finish(self) -> int | None:
        self.process.join(120)
        return self.process.exitcode

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
