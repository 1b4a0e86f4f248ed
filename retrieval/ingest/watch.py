"""Watch a folder and keep an index up to date with it by itself (`retrieval watch`, `serve --watch`).

File events (watchdog: inotify, FSEvents, ReadDirectoryChangesW, or polling where those cannot see the
changes) are collected and debounced into batches: a batch starts once no event has come for `quiet` seconds,
or `max_delay` seconds after its first event, so a camera import of 500 files is one ingest, not 500. Each
batch is one ordinary incremental ingest of just the paths its events named (created, modified, moved from
and to, deleted; a folder that appeared is listed, one that went takes the files under it along), by the
rules `retrieval ingest` uses, so that its cost is the batch's, not the library's. The whole folder is
rescanned where the events cannot be trusted to name every change: when watching starts, when the folder is
back, after the OS dropped events (an inotify queue overflow), when an event names the folder itself, and
when a batch names more than RESCAN_ABOVE paths (a rescan is then as cheap). A batch does not start sooner
after the previous one than that one took.

A folder that goes away (a disk unmounted, a share dropped) is waited for, never taken for every file
deleted: while the folder is missing, no longer a mount point, or empty although the index holds files from
it, no ingest runs; when it is back, a catch-up ingest finds what changed meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval.errors import IndexBusyError, StorageError, StoreUnavailableError, UsageError
from retrieval.files.decoding import SUPPORTED_EXTENSIONS
from retrieval.ingest.pipeline import IngestProgress, IngestReport, ProgressFn

#: File systems whose changes made on another machine inotify does not see: they are watched by polling.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs"}
    | {"fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.ceph"}
)
#: Event types that can change what the index holds; reads (opened, closed without writing, which the
#: ingest's own reads cause) are not among them.
_CHANGES = frozenset({"created", "deleted", "modified", "moved", "closed"})
#: Errors after which the watcher logs and tries again later rather than stopping: another writer holds the
#: index, the disk refuses for now, the Milvus server is away.
_RETRYABLE = (IndexBusyError, StorageError, StoreUnavailableError)

#: A batch naming more paths than this rescans the whole folder instead.
RESCAN_ABOVE = 10_000

IngestFn = Callable[[ProgressFn], IngestReport]
#: An incremental ingest of only these paths under the root (files, or folders and what is under them).
IngestPathsFn = Callable[[ProgressFn, Sequence[str]], IngestReport]
BatchKind = Literal["catch-up", "changes", "waiting", "back", "polling", "failed", "stopped"]


@dataclass(frozen=True)
class WatchBatch:
    """One line of the watch log: an ingest the watcher ran (`report`, with the file `events` that set it
    off; "catch-up" at the start and when the folder is back, "changes" otherwise), or what the watcher
    has to say (`note`): "waiting" for the folder, "back", "polling" instead of OS events, a "failed"
    ingest it will try again, "stopped" in the middle of a batch."""

    kind: BatchKind
    events: int = 0
    report: IngestReport | None = None
    note: str | None = None


@dataclass(frozen=True)
class WatchResult:
    """How a watch ended: the ingests it ran and whether it was stopped in the middle of one (what that
    batch had done is saved; the next watch or ingest does the rest)."""

    batches: int
    interrupted: bool


def network_filesystem(path: Path) -> str | None:
    """The type of the network file system `path` lies on (nfs, cifs, fuse.sshfs ...), or None for a
    local one or where the mount table cannot be read (not Linux)."""
    try:
        table = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    real, best, kind = os.path.realpath(path), "", ""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


class Watcher:
    """Watches `root` and runs `ingest` once per batch of changes; `run()` blocks until `stop()` (from
    another thread) or Ctrl-C.

    Args:
        root: the folder to watch (it may be missing at the start: it is waited for).
        ingest: one incremental ingest of `root`, given a progress callback (which the watcher uses to stop a
            batch cleanly: the ingest saves what it has done and raises KeyboardInterrupt).
        ingest_paths: the same, of only the paths a batch's events named; None rescans for every batch.
        indexed_files: how many files the index holds under `root` (asked only when the folder is empty).
        quiet: seconds without an event before a batch starts.
        max_delay: seconds after a batch's first event by which it starts, events or not.
        poll_interval: seconds between looks at a missing folder, and between scans when polling.
        polling: True to poll, False to use the OS's events, None to poll only on network file systems and
            where the OS refuses (the inotify watch limit).
        ignore: folders whose events are ignored (the index's own, should it lie inside `root`).
        on_batch: called with each WatchBatch, in the watcher's thread.
        progress: passed the ingests' progress.
    """

    def __init__(
        self,
        root: Path,
        ingest: IngestFn,
        *,
        ingest_paths: IngestPathsFn | None = None,
        indexed_files: Callable[[], int],
        quiet: float = 2.0,
        max_delay: float = 60.0,
        poll_interval: float = 5.0,
        polling: bool | None = None,
        ignore: Sequence[Path] = (),
        on_batch: Callable[[WatchBatch], None] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        if quiet < 0 or max_delay < quiet or poll_interval <= 0:
            raise UsageError(
                f"watch needs 0 <= quiet <= max_delay and poll_interval > 0, not quiet={quiet}, "
                f"max_delay={max_delay}, poll_interval={poll_interval}"
            )
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._ingest = ingest
        self._ingest_paths = ingest_paths
        self._indexed_files = indexed_files
        self.quiet, self.max_delay, self.poll_interval = quiet, max_delay, poll_interval
        self.polling = polling
        self._ignore = tuple(os.path.abspath(p) + os.sep for p in ignore)
        self._on_batch = on_batch or (lambda _b: None)
        self._progress = progress
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._pending = 0
        self._paths: set[str] = set()  # named by the pending events
        self._rescan = False  # the pending batch rescans the whole folder
        self._taken: list[str] | None = None  # the paths of the batch _next_batch returned; None: rescan
        self._overflow = _Overflow(self._on_overflow)
        self._first = self._last = 0.0
        self._gone = False
        self._was_mount = False
        self._observer: Any = None
        self._stopped_in_batch = False
        self._rest_until = 0.0
        self.batches = 0

    # -- control ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to end: at once when idle; a batch in progress stops at the next file, saving what it
        has done. Safe from any thread."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def run(self) -> WatchResult:
        """Watch until stopped; a Ctrl-C in the thread that runs this stops it as `stop()` does."""
        self._was_mount = os.path.ismount(self.root)
        interrupted = False
        try:
            while not self._stop.is_set():
                if self._available() is not None and not self._wait_for_folder():
                    break
                self._start_observer()
                self._batch("catch-up", 0)
                while not self._stop.is_set():
                    events = self._next_batch()
                    if events is None or self._available() is not None:
                        break
                    self._batch("changes", events, self._taken)
                self._stop_observer()
        except KeyboardInterrupt:
            interrupted = self._stopped_in_batch
        finally:
            self._stop_observer()
        if interrupted:
            self._on_batch(WatchBatch("stopped", note="stopped during a batch: what it had done is saved"))
        return WatchResult(self.batches, interrupted)

    # -- the folder ------------------------------------------------------------------------------------

    def _available(self) -> str | None:
        """None when the folder can be ingested; else why not."""
        if not self.root.is_dir():
            return f"{self.root} is missing"
        if self._was_mount and not os.path.ismount(self.root):
            return f"{self.root} is no longer mounted"
        try:
            with os.scandir(self.root) as entries:
                empty = next(entries, None) is None
        except OSError as exc:
            return f"{self.root} cannot be read: {exc.strerror or exc}"
        if empty:
            held = self._indexed_files()
            if held:
                return (
                    f"{self.root} is empty but the index holds {held} files from it (taken as unmounted; "
                    f"`retrieval ingest {self.root}` forgets them)"
                )
        return None

    def _wait_for_folder(self) -> bool:
        """Log why the folder cannot be watched and look again every `poll_interval` seconds; False when
        stopped first."""
        reason = self._available()
        if reason is None:
            return True
        self._on_batch(WatchBatch("waiting", note=f"{reason}: waiting for it to come back"))
        while not self._stop.wait(self.poll_interval):
            if self._available() is None:
                self._on_batch(WatchBatch("back", note=f"{self.root} is back: catching up"))
                return True
        return False

    # -- events ----------------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        with self._changed:
            self._pending, self._gone, self._rescan = 0, False, False
            self._paths.clear()
        network = network_filesystem(self.root) if self.polling is None else None
        observer: Any
        if self.polling or network:
            observer = PollingObserver(timeout=self.poll_interval)
            why = f"{self.root} is on {network}" if network else "asked for"
            self._on_batch(WatchBatch("polling", note=f"{why}: scanning every {self.poll_interval:g}s"))
        else:
            observer = Observer()
        observer.schedule(_Events(self), str(self.root), recursive=True)
        try:
            observer.start()
        except OSError as exc:  # inotify's watch or instance limit, a file system it cannot watch
            if isinstance(observer, PollingObserver):
                raise
            observer = PollingObserver(timeout=self.poll_interval)
            observer.schedule(_Events(self), str(self.root), recursive=True)
            observer.start()
            self._on_batch(
                WatchBatch(
                    "polling",
                    note=f"file events unavailable ({exc.strerror or exc}): scanning every "
                    f"{self.poll_interval:g}s (raise fs.inotify.max_user_watches for events)",
                )
            )
        self._observer = observer
        _OVERFLOW_LOG.addHandler(self._overflow)

    def _stop_observer(self) -> None:
        _OVERFLOW_LOG.removeHandler(self._overflow)
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(10)

    def _event(self, paths: list[str], is_directory: bool, event_type: str) -> None:
        """Called from the observer's thread for every event under the root."""
        if event_type not in _CHANGES or (is_directory and event_type == "modified"):
            return
        if self._ignore and all(p.startswith(self._ignore) for p in paths):
            return
        root = str(self.root)
        gone = event_type in ("deleted", "moved") and paths[0] == root
        image = any(os.path.splitext(p)[1].lower() in SUPPORTED_EXTENSIONS for p in paths)
        if not (gone or is_directory or image):
            return
        with self._changed:
            self._note_change()
            self._gone = self._gone or gone
            if root in paths:
                self._rescan = True
            elif not self._rescan:
                self._paths.update(p for p in paths if not (self._ignore and p.startswith(self._ignore)))
                if len(self._paths) > RESCAN_ABOVE:
                    self._rescan = True
            if self._rescan:
                self._paths.clear()
            self._changed.notify_all()

    def _note_change(self) -> None:
        """Count one more pending event (with `_changed` held)."""
        now = time.monotonic()
        if not self._pending:
            self._first = now
        self._pending += 1
        self._last = now

    def _on_overflow(self, record: logging.LogRecord) -> None:
        """The OS dropped events (watchdog logs an inotify queue overflow): the next batch rescans."""
        if "overflow" in record.getMessage().lower():
            with self._changed:
                self._note_change()
                self._rescan = True
                self._paths.clear()
                self._changed.notify_all()

    def _next_batch(self) -> int | None:
        """Wait for the next batch; its number of events, or None when stopped or the folder is gone."""
        with self._changed:
            while not self._stop.is_set() and not self._gone:
                now = time.monotonic()
                if self._pending:
                    due = max(min(self._last + self.quiet, self._first + self.max_delay), self._rest_until)
                    if now >= due:
                        events, self._pending = self._pending, 0
                        paths = self._rescan or self._ingest_paths is None
                        self._taken = None if paths else sorted(self._paths)
                        self._paths.clear()
                        self._rescan = False
                        return events
                    self._changed.wait(min(due - now, self.poll_interval))
                else:
                    self._changed.wait(self.poll_interval)
                    if not self._pending and not self._stop.is_set() and self._available() is not None:
                        return None  # gone without an event (an unmount, a share that dropped)
            return None

    def _retry_later(self, paths: Sequence[str] | None) -> None:
        """Put a failed batch back: its paths (None: a rescan) join the next one's."""
        with self._changed:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            self._pending += 1
            self._last = max(self._last, now + self.poll_interval - self.quiet)
            if paths is None:
                self._rescan = True
                self._paths.clear()
            elif not self._rescan:
                self._paths.update(paths)

    # -- batches ---------------------------------------------------------------------------------------

    def _batch(self, kind: BatchKind, events: int, paths: Sequence[str] | None = None) -> None:
        """Run one ingest: of `paths` only, or (None) of the whole folder."""

        def progress(p: IngestProgress) -> None:
            if self._progress is not None:
                self._progress(p)
            if self._stop.is_set():
                raise KeyboardInterrupt  # the ingest saves what it has done, then re-raises

        self._was_mount = self._was_mount or os.path.ismount(self.root)  # mounted since the start
        try:
            if paths is None or self._ingest_paths is None:
                report = self._ingest(progress)
            else:
                report = self._ingest_paths(progress, paths)
        except KeyboardInterrupt:
            self._stopped_in_batch = True
            raise
        except _RETRYABLE as exc:
            self._on_batch(WatchBatch("failed", events, note=f"{exc}; trying again"))
            self._retry_later(paths)
            return
        except UsageError as exc:
            if self._available() is None:
                raise
            # The folder went away between the look and the scan: the next look waits for it.
            self._on_batch(WatchBatch("failed", events, note=str(exc)))
            return
        self.batches += 1
        # Resting as long as the last batch took keeps a large library (or a slow share) from being rescanned
        # more than half the time under a steady trickle of changes (batches of paths take little).
        self._rest_until = time.monotonic() + report.seconds
        self._on_batch(WatchBatch(kind, events, report=report))


#: Where watchdog tells of an inotify queue overflow (events lost); the watcher listens while it watches.
_OVERFLOW_LOG = logging.getLogger("watchdog.observers.inotify_c")


class _Overflow(logging.Handler):
    """Passes watchdog's log records to a watcher's callback (logging wants a Handler)."""

    def __init__(self, callback: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.WARNING)
        self._callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self._callback(record)


class _Events:
    """Watchdog's handler: passes each event's paths to the watcher (watchdog calls `dispatch`)."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: Any) -> None:
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        self._watcher._event(paths, bool(event.is_directory), str(event.event_type))
