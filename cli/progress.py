"""The CLI's progress displays on stderr (rich): the ingest's bar with windowed rates and an ETA, and the
map's spinner. A module of its own so that rich's progress machinery loads only for a command that shows
progress, not for `--help` or `stats` (BENCHMARKS.md, "CLI start")."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

if TYPE_CHECKING:
    from retrieval.ingest.pipeline import IngestProgress
    from retrieval.maps.layout import MapProgress

#: The rate is the count's growth over about this many seconds (the last count before the window and the
#: newest one): steady while batches come every few seconds, falling while nothing comes.
RATE_WINDOW_S = 30.0
#: No ETA once neither count has moved for this long (a model working through a slow batch).
STALL_S = 15.0
_PHASES_WITH_RATE = ("ingest", "embed")


class _Window:
    """A count over time, for a rate that is an average over the last RATE_WINDOW_S seconds and that
    falls, at each redraw, while the count stands still (rich's own speed stays at its last value)."""

    def __init__(self, now: float) -> None:
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])
        self.moved_at = now

    def add(self, count: int, now: float, *, moved: bool) -> None:
        if count != self.samples[-1][1]:
            self.samples.append((now, count))
        if moved:
            self.moved_at = now
        self._trim(now)

    def _trim(self, now: float) -> None:
        while len(self.samples) > 1 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        """Counts a second; None in the first second (too soon to say)."""
        self._trim(now)
        (since, first), (_, last) = self.samples[0], self.samples[-1]
        span = now - since
        return (last - first) / span if span >= 1.0 else None

    def moving(self, now: float) -> bool:
        return now - self.moved_at < STALL_S


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else f"{done}")


class _WindowColumn(ProgressColumn):
    """A column drawn from each task's count window (`windows`, by task id), read at `clock`'s time."""

    def __init__(self, windows: dict[Any, _Window], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.windows = windows
        self.clock = clock


class _RateColumn(_WindowColumn):
    """The windowed rate while running; once finished, the average over the whole phase."""

    def render(self, task: Task) -> Text:
        window = self.windows.get(task.id)
        if window is None:
            return Text("")
        if task.finished:
            elapsed = task.finished_time or 0.0
            rate = task.completed / elapsed if elapsed >= 1.0 else None
        else:
            rate = window.rate(self.clock())
        return Text(f"{rate:.1f} img/s" if rate is not None else "", style="cyan")


class _EtaColumn(_WindowColumn):
    """Time left at the windowed rate, on the lines that ask for it; nothing while the ingest's counts stand
    still, or before there is a rate."""

    def render(self, task: Task) -> Text:
        window = self.windows.get(task.id)
        now = self.clock()
        if window is None or not task.fields.get("eta") or task.finished or task.total is None:
            return Text("")
        rate = window.rate(now)
        if not rate or not task.fields["still"].moving(now):
            return Text("")
        left = int((task.total - task.completed) / rate)
        return Text(f"eta {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")


@contextmanager
def ingest_bar(
    enabled: bool, console: Console, safe: Callable[[object], str]
) -> Iterator[Callable[[IngestProgress], None]]:
    """A callback that draws an ingest's (or eval's) progress on stderr, a line per phase; the ingest has
    two, files decoded (per file) and embedded (per batch), and the scan's line goes when the scan ends.
    Called from the decode threads too (rich's Progress takes a lock)."""
    if not enabled:
        yield lambda _p: None
        return
    windows: dict[Any, _Window] = {}
    columns = (
        TextColumn("{task.description:<8}"),
        BarColumn(bar_width=30),
        _CountColumn(),
        _RateColumn(windows),
        TimeElapsedColumn(),
        _EtaColumn(windows),
    )
    # Started on the first report, so that a command failing before any (a missing folder, a bad model) prints
    # its error alone, without the empty line of a bar that never ran.
    bar = Progress(*columns, console=console, transient=False)
    tasks: dict[str, Any] = {}
    # When either of the ingest's counts last moved: no ETA while neither does.
    still = _Window(time.monotonic())

    def line(name: str, total: int | None, *, rate: bool, eta: bool = False) -> Any:
        if name not in tasks:
            tasks[name] = bar.add_task(safe(name), total=total, eta=eta, still=still)
            if rate:
                windows[tasks[name]] = _Window(time.monotonic())
        return tasks[name]

    def count(task: Any, done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)
        window = windows.get(task)
        if window is not None:
            now = time.monotonic()
            moved = done != window.samples[-1][1]
            window.add(done, now, moved=moved)
            if moved:
                still.add(0, now, moved=True)

    def update(p: IngestProgress) -> None:
        if not tasks:
            bar.start()
        if p.phase != "scan" and "scan" in tasks:
            bar.remove_task(tasks.pop("scan"))
        if p.phase == "ingest":
            if "decoded" not in tasks:
                still.add(0, time.monotonic(), moved=True)
            count(line("decoded", p.total, rate=True), p.decoded, p.total)
            count(line("embedded", p.total, rate=True, eta=True), p.embedded, p.total)
        else:
            rated = p.phase in _PHASES_WITH_RATE
            count(line(p.phase, p.total, rate=rated, eta=rated), p.done, p.total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


_MAP_STAGES = {"layout": "laying out the map", "thumbnails": "making thumbnails", "drawing": "drawing"}


@contextmanager
def map_spinner(
    enabled: bool, console: Console, safe: Callable[[object], str]
) -> Iterator[Callable[[MapProgress], None]]:
    """A spinner on stderr naming the map's stage (and the thumbnails made of how many), gone at the end."""
    if not enabled:
        yield lambda _p: None
        return
    spinner = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True)
    task = spinner.add_task("")
    started = False

    def show(p: MapProgress) -> None:
        nonlocal started
        if not started:
            spinner.start()
            started = True
        what = _MAP_STAGES.get(p.stage, p.stage)
        if p.stage == "thumbnails" and p.total:
            what += f" {p.done}/{p.total}" if p.done else ""
        spinner.update(task, description=safe(what))

    try:
        yield show
    finally:
        if started:
            spinner.stop()
