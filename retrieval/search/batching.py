"""`TextBatcher`: text queries from concurrent callers embedded together, in one forward of the text tower.

A text query's vector costs one forward of the model; on a CPU a forward of a few short texts costs little
more than one of a single text (the weights are read once per forward either way), so a server whose clients
ask at the same time answers more of them per second when their texts share a forward.

There is no batching thread: the first caller that finds no forward running leads. It takes the texts
queued so far (up to `max_batch`), runs the forward on its own thread, hands each caller its rows and lets
the next queued caller lead. Texts that arrive while a forward runs wait for it and go together in the
next one. A leader waits up to `window` seconds for more only when the forwards just before it were
shared (several callers at once, within the last `RECENT_S`), and stops waiting as soon as as many texts
are queued as the last forward took: a lone caller never waits. A forward that fails is run again for each
caller alone, so one bad request fails alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from retrieval.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

#: Most texts one shared forward takes.
DEFAULT_MAX_BATCH = 32
#: Longest a leader waits for more texts (seconds), when the forwards before it were shared. The engine's
#: default is retrieval.settings.DEFAULT_TEXT_BATCH_WINDOW_MS.
DEFAULT_WINDOW_S = 0.0
#: Longest window accepted (seconds): a window is a few milliseconds, not a queue.
MAX_WINDOW_S = 0.05
#: Forwards that ended longer ago than this (seconds) say nothing about who else is asking now.
RECENT_S = 1.0


@dataclass
class _Request:
    """One caller's texts, and what came of them."""

    texts: list[str]
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        assert self.vectors is not None
        return self.vectors


@dataclass
class BatcherStats:
    """What a batcher has done, for tests and benchmarks: `forwards` run (shared or alone), `requests` and
    `texts` answered, `waits` (times a leader waited for the window) and `sizes` (texts per forward)."""

    forwards: int = 0
    requests: int = 0
    texts: int = 0
    waits: int = 0
    sizes: list[int] = field(default_factory=list)


class TextBatcher:
    """Embed the texts of concurrent callers in shared forwards of `forward` (texts in, one row each out).

    Args:
        forward: embeds a list of texts, returning an array with one row per text (the caller serialises
            it with any other use of the model).
        max_batch: most texts one forward takes; 1 turns batching off (each caller runs its own forward).
        window: seconds a leader may wait for more texts (0: only those queued while a forward ran).
    """

    def __init__(
        self,
        forward: Callable[[list[str]], np.ndarray],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        window: float = DEFAULT_WINDOW_S,
    ) -> None:
        if max_batch < 1 or not 0 <= window <= MAX_WINDOW_S:
            raise UsageError(
                f"text batching takes a batch of 1 or more and a window of 0 to {MAX_WINDOW_S * 1000:g} ms, "
                f"not {max_batch} and {window * 1000:g} ms"
            )
        self._forward = forward
        self.max_batch, self.window = max_batch, window
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._leading = False
        self._closed = False
        self._last_size = 1
        self._last_end = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def queued(self) -> int:
        """Texts waiting for a forward now (not those in a running one)."""
        with self._cond:
            return sum(len(r.texts) for r in self._queue)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, from a forward shared with whoever else is asking.

        Raises:
            UsageError: the batcher was closed before these texts were embedded.
            Whatever `forward` raises for these texts alone.
        """
        request = _Request(list(texts))
        if not self.enabled or not request.texts:
            if self._closed:
                raise UsageError("the text batcher is closed")
            vectors = self._forward(request.texts)
            self._count(1, texts=len(request.texts))
            return vectors
        with self._cond:
            if self._closed:
                raise UsageError("the text batcher is closed")
            self._queue.append(request)
            self._cond.notify_all()  # a leader waiting for its window counts the new texts
            while True:
                while not request.done and (self._leading or not self._queue):
                    self._cond.wait()
                if request.done:
                    return request.result()
                self._leading = True
                batch = self._take()
                if not batch:  # closed while the leader waited: its own request failed with the rest
                    self._leading = False
                    continue
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._last_size = max(1, sum(len(r.texts) for r in batch))
                    self._last_end = time.monotonic()
                    self._cond.notify_all()

    def _take(self) -> list[_Request]:
        """The requests of the next forward, oldest first (called holding the lock, leading): after waiting
        up to the window when the forwards just before were shared and fewer texts are queued than they
        took."""
        recent = time.monotonic() - self._last_end < RECENT_S
        target = min(self.max_batch, self._last_size if recent else 1)
        if self.window > 0 and self._queued_texts() < target:
            self.stats.waits += 1
            deadline = time.monotonic() + self.window
            while not self._closed and self._queued_texts() < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch: list[_Request] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            request = self._queue.popleft()
            batch.append(request)
            size += len(request.texts)
        return batch

    def _queued_texts(self) -> int:
        return sum(len(r.texts) for r in self._queue)

    def _run(self, batch: list[_Request]) -> None:
        """Embed `batch` in one forward, or each request alone when that fails (called without the lock).
        Every request of the batch is done afterwards, whatever happened."""
        try:
            if len(batch) == 1 or not self._shared(batch):
                for request in batch:
                    self._alone(request)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the others must not wait forever
            for request in batch:
                if request.vectors is None and request.error is None:
                    request.error = RuntimeError(f"the shared text forward was interrupted ({exc!r})")
            raise
        finally:
            with self._cond:
                for request in batch:
                    request.done = True
                self._cond.notify_all()

    def _shared(self, batch: list[_Request]) -> bool:
        """Run one forward for every request of `batch`; False when it failed (nothing is then set)."""
        try:
            vectors = self._forward([text for request in batch for text in request.texts])
        except Exception:
            self._count(len(batch), ok=False)
            return False
        start = 0
        for request in batch:
            request.vectors = vectors[start : start + len(request.texts)]
            start += len(request.texts)
        self._count(len(batch), texts=start)
        return True

    def _alone(self, request: _Request) -> None:
        try:
            request.vectors = self._forward(request.texts)
        except Exception as exc:
            request.error = exc
        self._count(1, texts=len(request.texts), ok=request.error is None)

    def _count(self, requests: int, *, texts: int = 0, ok: bool = True) -> None:
        """Count one forward (of `requests` requests, `texts` texts when it succeeded)."""
        with self._cond:
            self.stats.forwards += 1
            if ok:
                self.stats.requests += requests
                self.stats.texts += texts
                self.stats.sizes.append(texts)

    def close(self) -> None:
        """Refuse new texts and fail those still queued; a forward already running finishes and its callers
        get their rows."""
        with self._cond:
            self._closed = True
            while self._queue:
                request = self._queue.popleft()
                request.error = UsageError("the text batcher was closed before this query was embedded")
                request.done = True
            self._cond.notify_all()
