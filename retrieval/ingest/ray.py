"""Distributed ingest on Ray Data: decoding and the model run on a Ray cluster, the index stays here.

The driver (this process) lists the files and reads and hashes every new one, so that moved files and
copies are recognised against the database exactly as in a local ingest. The content it has never embedded
goes to a Ray Data pipeline as (position, path, hash) rows: `map_batches` over a pool of `EmbedWorker`
actors, one model each (and one GPU each when the cluster has them), each reading the file at the same
path, checking that its hash has not changed, decoding, preprocessing and embedding. Vectors and failure
reasons come back in batches in whatever order they finish; the driver puts them back in the listing's
order and records them through the ingestor's own code, so ids, rows, failure records, transactions and
checkpoints are those of a local ingest.

Ray is an optional extra (`pip install 'retrieval[ray]'`), imported here only, and only when asked for.

    with ray_stage("local", engine.embedder, EmbedderArgs("classic", None, None, "classic:v1")) as stage:
        Ingestor(meta, store, engine.embedder, stage=stage).run(folder)
"""

from __future__ import annotations

import logging
import math
import re
import socket
import warnings
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from retrieval import settings
from retrieval.embedders import Embedder, RandomWeightsWarning, create_embedder
from retrieval.errors import ClusterError, DecodeError, IndexMismatchError, RetrievalError, UsageError
from retrieval.files.discovery import FoundFile
from retrieval.ingest.pipeline import (
    IngestProgress,
    LookupFn,
    Prepared,
    ProgressFn,
    decode_for,
    default_workers,
    open_and_hash,
    read_and_hash,
)

LOCAL = "local"
INSTALL_HINT = "pip install 'retrieval[ray]'"
CHANGED = "file changed while it was being indexed; the next ingest takes it again"
_PROBE_TIMEOUT_S = 3.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class EmbedderArgs:
    """What a worker needs to build the index's embedder: the manifest's name, pretrained tag and weights
    file (at the same path on every node), and the id the result must have."""

    name: str
    pretrained: str | None
    weights: str | None
    embedder_id: str


def import_ray() -> ModuleType:
    """The `ray` module with Ray Data, or a UsageError naming the extra to install."""
    try:
        import ray
        import ray.data  # Ray Data needs the `data` extra's packages (pandas, pyarrow)
    except ImportError as exc:
        raise UsageError(
            f"distributed ingest needs Ray Data, which is not installed ({exc.name or exc}); {INSTALL_HINT}"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, on a host:port nobody listens on (Ray itself retries for a minute)."""
    if address in (LOCAL, "auto"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise UsageError(
            f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local; "
            "e.g. ray://head-node:10001"
        )
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise ClusterError(
        f"cannot reach a Ray cluster at {address} ({reason}); start one there with `ray start --head`, "
        "check the address, or use --ray alone for a runtime on this machine"
    )


@contextmanager
def ray_runtime(address: str) -> Iterator[ModuleType]:
    """Ray connected to `address` for the block: "local" starts a runtime on this machine (and stops it
    after), "auto" joins the one `ray start` runs here, "ray://HOST:10001" (Ray Client) or "HOST:6379" a
    cluster. A runtime this process already started (`ray.init`) is used as it is and left running.

    Raises:
        UsageError: Ray is not installed, or the address is malformed.
        ClusterError: nothing answers at the address.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    _check_reachable(address)
    options: dict[str, Any] = {"logging_level": logging.ERROR}
    if address == LOCAL:
        options |= {"include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}; start one with "
            "`ray start --head`, or use --ray alone for a runtime on this machine"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def ray_stage(
    address: str,
    embedder: Embedder,
    args: EmbedderArgs,
    *,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[RayStage]:
    """A `RayStage` on the cluster at `address` (see `ray_runtime`) for the block."""
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    with ray_runtime(address) as ray:
        data_log.setLevel(logging.ERROR)  # no "Starting execution of Dataset" lines under the caller's output
        try:
            yield RayStage(
                ray, embedder, args, device=device, batch_size=batch_size, workers=workers, progress=progress
            )
        finally:
            data_log.setLevel(level)


class EmbedWorker:
    """A Ray Data actor: builds the index's embedder once, then turns batches of (seq, path, hash) rows into
    (seq, vector, error, width, height, format, captured_at) rows. A file that cannot be read or decoded
    gets the reason a local ingest records, and a zero vector."""

    def __init__(self, args: EmbedderArgs, device: str, batch_size: int, threads: int) -> None:
        if device == "cpu":
            import torch

            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # the driver has said it already
            self.embedder = create_embedder(
                args.name,
                pretrained=args.pretrained,
                weights=args.weights,
                device=device,
                batch_size=batch_size,
            )
        if self.embedder.id != args.embedder_id:
            raise IndexMismatchError(
                f"a Ray worker built {self.embedder.id}, not the index's {args.embedder_id}; "
                "give every node the same version of retrieval and the same weights file"
            )
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="retrieval-decode")

    def _prepare(self, path: str, digest: str) -> tuple[Any, Any] | str:
        try:
            fp, current = open_and_hash(Path(path), settings.max_file_bytes())
            with fp:
                if current != digest:
                    return CHANGED
                return decode_for(self.embedder, fp)
        except DecodeError as exc:
            return exc.reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = list(self.pool.map(self._prepare, batch["path"], batch["hash"]))
        good = [i for i, r in enumerate(results) if not isinstance(r, str)]
        vectors = np.zeros((len(results), self.embedder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.embedder.embed_preprocessed([results[i][0] for i in good])
        decoded = [None if isinstance(r, str) else r[1] for r in results]
        return {
            "seq": batch["seq"],
            "vector": vectors,
            "error": np.array([r if isinstance(r, str) else "" for r in results]),
            "width": np.array([d.width if d else 0 for d in decoded], dtype=np.int64),
            "height": np.array([d.height if d else 0 for d in decoded], dtype=np.int64),
            "format": np.array([d.format if d else "" for d in decoded]),
            "captured_at": np.array(
                [d.captured_at.isoformat() if d and d.captured_at else "" for d in decoded]
            ),
        }


@dataclass(frozen=True)
class _Plan:
    workers: int
    device: str
    num_cpus: float
    num_gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


class RayStage:
    """The ingest stage of a Ray cluster: hashing here, decoding and embedding on the cluster (see the module
    docstring). `workers` actors (default: one per GPU, else one per 4 CPUs), each with an equal share of the
    cluster's CPUs for its decode threads."""

    def __init__(
        self,
        ray: ModuleType,
        embedder: Embedder,
        args: EmbedderArgs,
        *,
        device: str = "auto",
        batch_size: int = 32,
        workers: int | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.ray = ray
        self.embedder = embedder
        self.args = args
        self.batch_size = batch_size
        self.progress = progress or (lambda _p: None)
        self.plan = self._plan(device, workers)

    def _plan(self, device: str, workers: int | None) -> _Plan:
        resources = self.ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
        if device.startswith("cuda") and not gpus:
            raise UsageError(f"device {device!r} asked for, but the Ray cluster has no GPU; use cpu or auto")
        if gpus and device != "cpu":
            count = workers or int(gpus)
            return _Plan(count, "cuda", _share(cpus, count), min(1.0, gpus / count))
        count = workers or max(1, int(cpus) // 4)
        return _Plan(count, "cpu", _share(cpus, count), 0.0)

    # -- driver side: read and hash, in order -----------------------------------------------------------

    def _hash(self, found: FoundFile, lookup: LookupFn) -> Prepared:
        prepared, fp = read_and_hash(found, lookup, settings.max_file_bytes())
        if fp is not None:
            fp.close()  # the cluster reads it again
        return prepared

    def _hashed(self, todo: list[FoundFile], lookup: LookupFn) -> list[Prepared]:
        workers = default_workers()
        hashed: list[Prepared] = []
        with ThreadPoolExecutor(workers, thread_name_prefix="retrieval-hash") as pool:
            window: deque[Future[Prepared]] = deque()
            try:
                for found in todo:
                    window.append(pool.submit(self._hash, found, lookup))
                    if len(window) >= 4 * workers:
                        hashed.append(window.popleft().result())
                        self.progress(IngestProgress("hash", len(hashed), len(todo)))
                while window:
                    hashed.append(window.popleft().result())
                    self.progress(IngestProgress("hash", len(hashed), len(todo)))
            finally:
                for future in window:
                    future.cancel()
        return hashed

    # -- the cluster: decode and embed, in any order ------------------------------------------------------

    def _results(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        data = self.ray.data
        context = data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows progress
        plan = self.plan
        blocks = min(len(rows), max(2 * plan.workers, math.ceil(len(rows) / self.batch_size)))
        actors = min(plan.workers, blocks)  # no model loaded for an actor that would get no work
        dataset = data.from_items(rows, override_num_blocks=blocks).map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "args": self.args,
                "device": plan.device,
                "batch_size": self.batch_size,
                "threads": plan.threads,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=data.ActorPoolStrategy(size=actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
        )
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        try:
            yield from batches
        except Exception as exc:
            raise _cluster_failure(exc) from None

    def prepared(self, todo: list[FoundFile], lookup: LookupFn) -> Generator[Prepared, None, None]:
        hashed = self._hashed(todo, lookup)
        first: dict[str, int] = {}
        rows = []
        for i, prep in enumerate(hashed):
            if prep.error is None and prep.known_id is None:
                first.setdefault(prep.hash, i)
                rows.append({"seq": i, "path": str(prep.found.path), "hash": prep.hash})
        arrived: dict[int, Prepared] = {}
        expected = {row["seq"] for row in rows}
        position = 0

        def ready() -> Iterator[Prepared]:
            """The files from `position` on whose results are in, in order."""
            nonlocal position
            while position < len(hashed) and (position not in expected or position in arrived):
                prep = arrived.pop(position, None) or hashed[position]
                if position in expected and prep.error is None and first[prep.hash] != position:
                    # A copy of a file met earlier in this run: linked to it if that one was embedded.
                    prep.known_id = lookup(prep.hash)
                position += 1
                yield prep

        results = self._results(rows) if rows else iter(())
        try:
            yield from ready()
            for batch in results:
                for i, seq in enumerate(batch["seq"].tolist()):
                    arrived[seq] = self._received(hashed[seq], batch, i)
                yield from ready()
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        if position < len(hashed):
            raise ClusterError(
                f"the Ray cluster returned no result for {len(hashed) - position - len(arrived)} files; "
                "what was recorded is saved, run the ingest again"
            )

    @staticmethod
    def _received(sent: Prepared, batch: dict[str, np.ndarray], i: int) -> Prepared:
        error = str(batch["error"][i])
        if error:
            return Prepared(sent.found, sent.hash, error=error)
        captured = str(batch["captured_at"][i])
        return Prepared(
            sent.found,
            sent.hash,
            payload=np.asarray(batch["vector"][i], dtype=np.float32),
            width=int(batch["width"][i]),
            height=int(batch["height"][i]),
            format=str(batch["format"][i]),
            captured_at=datetime.fromisoformat(captured) if captured else None,
        )

    def vectors(self, payloads: list[Any]) -> np.ndarray:
        vectors = np.stack(payloads).astype(np.float32, copy=False)
        return self.embedder.project(vectors)


def _share(cpus: float, workers: int) -> float:
    """Each actor's CPUs: whole ones while there are enough (Ray schedules them more simply), else a fraction,
    so that every actor of the pool can start."""
    share = cpus / workers
    return float(math.floor(share)) if share >= 1 else share


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it wraps (Ray's `cause`, Python's __cause__ and __context__), each once."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        stack.extend([getattr(error, "cause", None), error.__cause__, error.__context__])


def _cluster_failure(exc: BaseException) -> RetrievalError:
    """A failure inside Ray as one line: an error of ours raised by a worker's task as itself, a worker that
    could not start (no weights there, another model, retrieval missing on a node) by the error's last line,
    anything else (a lost node, a crashed actor) as a ClusterError."""
    errors = list(_chain(exc))
    for error in errors:
        if isinstance(error, RetrievalError) and type(error).__module__.startswith("retrieval"):
            return error
    for error in errors:
        if getattr(error, "actor_init_failed", False):
            lines = _ANSI.sub("", str(getattr(error, "error_msg", ""))).strip().splitlines()
            reason = lines[-1].strip().removeprefix("retrieval.errors.") if lines else _first_line(error)
            return ClusterError(
                f"a Ray worker could not start: {reason}; fix that on every node and run the ingest again"
            )
    return ClusterError(
        f"the Ray cluster failed during the ingest: {_first_line(exc)}; what was recorded is saved, "
        "run the ingest again"
    )
