"""Distributed ingest on Ray Data: reading, hashing, decoding and the model run on a Ray cluster, the index
stays here.

The driver (this process) lists the files with their size and mtime (what the database needs to skip the
unchanged ones) and reads no photo: the files it has to look at go to a Ray Data pipeline as (position,
path, size, mtime) rows, `map_batches` over a pool of `EmbedWorker` actors, one model each (and one GPU
each when the cluster has them). Each worker reads a file once: it checks that the file is still the one
listed, hashes it, and decodes and embeds it unless its content is among the hashes the index has already
embedded (a sorted array of digests shipped once through the object store: 32 bytes a content, 32 MB
for a million), so that a moved file or a copy is recognised as in a local ingest without being decoded.
Hashes, vectors, thumbnails (made from the decoded pixels) and failure reasons come back in batches in
whatever order they finish; the driver puts them back in the listing's order and records them through the
ingestor's own code, so ids, rows, failure records, transactions and checkpoints are those of a local
ingest.

Actors are planned per node (each node's CPUs and GPUs from `ray.nodes()`, not the cluster's totals, so
that every actor fits on some node), restarted and retried a bounded number of times, and the GCS is
watched: a pool that cannot start, keeps dying, or loses the head ends the run with a ClusterError after
the ingestor has saved what it recorded.

Ray is an optional extra (`pip install 'retrieval[ray]'`), imported here only, and only when asked for.

    with ray_stage("local", engine.embedder, EmbedderArgs("classic", None, None, "classic:v1")) as stage:
        Ingestor(meta, store, engine.embedder, stage=stage).run(folder)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import re
import socket
import threading
import time
import warnings
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
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
from retrieval.files.decoding import PhotoInfo, check_file_size
from retrieval.files.discovery import FoundFile
from retrieval.files.thumbnails import thumbnails_of
from retrieval.ingest.pipeline import DecodedFn, LookupFn, Prepared, ProgressFn, decode_for, open_and_hash

LOCAL = "local"
INSTALL_HINT = "pip install 'retrieval[ray]'"
CHANGED = "file changed while it was being indexed; the next ingest takes it again"
#: How often Ray restarts an actor of the pool, and retries a batch whose actor died, before the run stops:
#: a file that kills its worker every time must not keep a cluster busy forever (Ray Data's default).
MAX_RESTARTS = 2
MAX_TASK_RETRIES = 2
#: Seconds without an answer from the head's GCS port before the run stops (Ray's own driver gives up,
#: and exits the process, after $RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default).
HEAD_LOST_S = 8.0
_PROBE_TIMEOUT_S = 3.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOKEN_HINT = (
    "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (the token) or RAY_AUTH_TOKEN_PATH (a file holding it), "
    "as on the cluster's nodes (`ray get-auth-token` on the head prints it)"
)


@dataclass(frozen=True)
class EmbedderArgs:
    """What a worker needs to build the index's embedder: the manifest's name, pretrained tag and weights
    file (at the same path on every node), and the id the result must have."""

    name: str
    pretrained: str | None
    weights: str | None
    embedder_id: str
    precision: str = "fp32"


def import_ray() -> ModuleType:
    """The `ray` module with Ray Data, or a UsageError naming the extra to install."""
    os.environ.update(settings.ray_driver_env())  # before Ray reads them (at import and in ray.init)
    try:
        import ray
        import ray.data  # Ray Data needs the `data` extra's packages (pandas, pyarrow)
    except ImportError as exc:
        raise UsageError(
            f"distributed ingest needs Ray Data, which is not installed ({exc.name or exc}); {INSTALL_HINT}"
        ) from None
    return ray


def _check_address(address: str) -> None:
    """Refuse, in one line, an address the ingest cannot use; fail in seconds on a HOST:PORT nobody listens
    on (Ray itself retries for a minute)."""
    if address in (LOCAL, "auto"):
        return
    if address.startswith("ray://"):
        raise UsageError(
            f"Ray address {address!r}: Ray Client (ray://) cannot run the ingest's Ray Data pipeline; "
            "give the head's GCS address HOST:6379 from a machine that can join the cluster, or run the "
            "ingest on the cluster with `ray job submit -- retrieval ingest ... --ray-address auto`"
        )
    parts = urlsplit(f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if "://" in address or not host or port is None:
        raise UsageError(
            f"Ray address {address!r} is not HOST:PORT, auto or local; e.g. head-node:6379 (the port "
            "`ray start --head` prints)"
        )
    if not _answers(host, port):
        raise ClusterError(
            f"cannot reach a Ray cluster at {address}; start one there with `ray start --head`, "
            "check the address, or use --ray alone for a runtime on this machine"
        )


def _answers(host: str, port: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _connect_failure(address: str, exc: BaseException) -> ClusterError:
    """ray.init's failure as one line; a refused or missing token (Ray only says it could not connect,
    after 21 s) says which variables to set."""
    auth = settings.ray_auth_env()
    text = " ".join(_first_line(e) for e in _chain(exc))
    refused = any(type(e).__name__ == "AuthenticationError" for e in _chain(exc)) or "AuthToken" in text
    has_token = auth.get(settings.RAY_AUTH_MODE_ENV) == "token" and (
        settings.RAY_AUTH_TOKEN_ENV in auth or settings.RAY_AUTH_TOKEN_PATH_ENV in auth
    )
    # Ray 2.60 says only "Failed to connect" when a cluster that answers refuses a driver without a token.
    if (not has_token and address not in (LOCAL, "auto")) or refused or "authentication token" in text:
        if has_token:
            return ClusterError(
                f"the Ray cluster at {address} refused this driver's token; give it the cluster's token "
                "in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head prints it)"
            )
        return ClusterError(
            f"the Ray cluster at {address} answers but did not let this driver in; it needs a token "
            f"(Ray turns token auth on by default): {_TOKEN_HINT}"
        )
    return ClusterError(
        f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}; if it uses token auth, "
        f"{_TOKEN_HINT}; or use --ray alone for a runtime on this machine"
    )


@contextmanager
def ray_runtime(address: str) -> Iterator[ModuleType]:
    """Ray connected to `address` for the block: "local" starts a runtime on this machine (and stops it
    after), "auto" joins the one `ray start` runs here, "HOST:6379" a cluster's head (this process joins
    it as a driver). A runtime this process already started (`ray.init`) is used as it is and left running.
    Ray Client (ray://) is refused: Ray Data does not run through it.

    Raises:
        UsageError: Ray is not installed, or the address is malformed or ray://.
        ClusterError: nothing answers at the address, or the cluster refuses this driver (token auth).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    _check_address(address)
    # Ray's log lines stay in its session folder: the CLI's output is its own.
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address == LOCAL:
        options |= {"include_dashboard": False}
    try:
        with _stderr_to_session_log():
            ray.init(address=address, **options)
    except Exception as exc:  # ConnectionError, RuntimeError, Ray's AuthenticationError (a RayError)
        raise _connect_failure(address, exc) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _stderr_to_session_log() -> Iterator[None]:
    """Ray's C++ client writes its retries ("Failed to get cluster ID from GCS server", once a second for
    21 s) straight to file descriptor 2 while ray.init connects: they go to a temporary file instead,
    dropped unless the connection fails with nothing better to say (then the failure names the cause)."""
    import sys
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


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
    thumbnail_sides: tuple[int, ...] = (),
) -> Iterator[RayStage]:
    """A `RayStage` on the cluster at `address` (see `ray_runtime`) for the block."""
    quiet = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [log.level for log in quiet]
    with ray_runtime(address) as ray:
        for log in quiet:
            log.setLevel(logging.ERROR)  # no "Starting execution of Dataset" lines under the caller's output
        try:
            yield RayStage(
                ray,
                embedder,
                args,
                device=device,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                thumbnail_sides=thumbnail_sides,
            )
        finally:
            for log, level in zip(quiet, levels, strict=True):
                log.setLevel(level)


def embedded_digests(hashes: Iterable[str]) -> np.ndarray:
    """Content hashes (hex) as a sorted array of raw digests, for `EmbedWorker`'s membership test."""
    digests = np.array([bytes.fromhex(h) for h in hashes], dtype="S32")
    digests.sort()
    return digests


class EmbedWorker:
    """A Ray Data actor: builds the index's embedder once, then turns batches of (seq, path, size, mtime_ns)
    rows into (seq, hash, known, vector, error, width, height, format, captured_at, thumb_SIDE...) rows. A
    file whose hash is in `known` (content the index has embedded) is not decoded; one that cannot be read
    or decoded gets the reason a local ingest records, and a zero vector. With `thumbnail_sides`, the JPEG
    thumbnails of the decoded picture come back too (b"" where none was made), as a local ingest makes
    them."""

    def __init__(
        self,
        args: EmbedderArgs,
        device: str,
        batch_size: int,
        threads: int,
        known: Any = None,
        thumbnail_sides: tuple[int, ...] = (),
    ) -> None:
        if device == "cpu":
            import torch

            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # the driver has said it already
            self.embedder = create_embedder(
                args.name,
                pretrained=args.pretrained,
                weights=args.weights,
                precision=args.precision,
                device=device,
                batch_size=batch_size,
            )
        if self.embedder.id != args.embedder_id:
            raise IndexMismatchError(
                f"a Ray worker built {self.embedder.id}, not the index's {args.embedder_id}; "
                "give every node the same version of retrieval and the same weights file"
            )
        if isinstance(known, list):  # [ObjectRef]: wrapped, so that Ray Data passes the reference itself
            import ray

            known = ray.get(known[0])
        self.known: np.ndarray = np.asarray(known if known is not None else [], dtype="S32")
        self.max_bytes = settings.max_file_bytes()
        self.thumbnail_sides = tuple(thumbnail_sides)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="retrieval-decode")

    def _is_known(self, digest: str) -> bool:
        key = np.array(bytes.fromhex(digest), dtype="S32")
        at = int(np.searchsorted(self.known, key))
        return at < len(self.known) and self.known[at] == key

    def _prepare(self, path: str, size: int, mtime_ns: int) -> tuple[str, Any]:
        """(hash, (payload, decoded, thumbnails)) for new content, (hash, None) for known content, ("",
        reason) else."""
        try:
            check_file_size(path, size, self.max_bytes)  # as listed: refused before a byte is read
            fp, digest = open_and_hash(Path(path), self.max_bytes)
            with fp:
                now = os.fstat(fp.fileno())
                if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
                    return "", CHANGED  # not the file listed: what the database would record is stale
                if self._is_known(digest):
                    return digest, None
                payload, decoded = decode_for(self.embedder, fp)
        except DecodeError as exc:
            return "", exc.reason
        thumbnails: dict[int, bytes] = {}
        if self.thumbnail_sides:
            with suppress(Exception):  # made on request instead
                full_size = (decoded.width, decoded.height)
                thumbnails = thumbnails_of(decoded.image, self.thumbnail_sides, full_size)
        return digest, (payload, decoded, thumbnails)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = list(
            self.pool.map(self._prepare, batch["path"], batch["size"].tolist(), batch["mtime_ns"].tolist())
        )
        new = [i for i, (digest, r) in enumerate(results) if digest and r is not None]
        vectors = np.zeros((len(results), self.embedder.dim), dtype=np.float32)
        if new:
            vectors[new] = self.embedder.embed_preprocessed([results[i][1][0] for i in new])
        decoded = [r[1] if digest and r is not None else None for digest, r in results]
        thumbs = [r[2] if digest and r is not None else {} for digest, r in results]
        return {
            "seq": batch["seq"],
            "hash": np.array([digest for digest, _ in results]),
            "known": np.array([bool(digest) and r is None for digest, r in results]),
            "vector": vectors,
            "error": np.array(["" if digest else r for digest, r in results]),
            "width": np.array([d.width if d else 0 for d in decoded], dtype=np.int64),
            "height": np.array([d.height if d else 0 for d in decoded], dtype=np.int64),
            "format": np.array([d.format if d else "" for d in decoded]),
            "captured_at": np.array(
                [d.captured_at.isoformat() if d and d.captured_at else "" for d in decoded]
            ),
            **{
                f"thumb_{side}": np.array([t.get(side, b"") for t in thumbs], dtype=object)
                for side in self.thumbnail_sides
            },
            "photo": np.array([json.dumps(dataclasses.asdict(d.info)) if d else "" for d in decoded]),
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
    """The ingest stage of a Ray cluster: listing here, reading, hashing, decoding and embedding on the
    cluster (see the module docstring). `workers` actors (default: one per GPU, else one per 4 CPUs of each
    node), each with the largest share of a node's CPUs (and GPUs) that lets them all fit on the nodes."""

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
        thumbnail_sides: tuple[int, ...] = (),
    ) -> None:
        self.ray = ray
        self.thumbnail_sides = tuple(thumbnail_sides)
        self.embedder = embedder
        self.args = args
        self.batch_size = batch_size
        self.progress = progress or (lambda _p: None)
        self.plan = self._plan(device, workers)
        self._embedded = embedded_digests(())

    def _plan(self, device: str, workers: int | None) -> _Plan:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive", True)]
        cpus = [float(r.get("CPU", 0.0)) for r in nodes]
        gpus = [float(r.get("GPU", 0.0)) for r in nodes]
        if device.startswith("cuda") and not sum(gpus):
            raise UsageError(f"device {device!r} asked for, but the Ray cluster has no GPU; use cpu or auto")
        if sum(gpus) and device != "cpu":
            count = workers or int(sum(gpus)) or 1
            gpu_share = _fit(gpus, count, whole=count <= int(sum(gpus)))
            # Each GPU node's CPUs, shared by the actors its GPUs hold.
            slots = [math.floor(g / gpu_share + 1e-9) for g in gpus]
            cpu_share = min((c / n for c, n in zip(cpus, slots, strict=True) if n), default=0.0)
            return _Plan(count, "cuda", _whole(cpu_share), gpu_share)
        count = workers or sum(max(1, int(c) // 4) for c in cpus if c >= 1) or 1
        return _Plan(count, "cpu", _fit(cpus, count), 0.0)

    def use_embedded_hashes(self, hashes: Iterable[str]) -> None:
        """The hashes of the content the index has embedded: a worker hashes a file, and one whose content is
        among them is linked by the driver without being decoded. Read at once (a database cursor)."""
        self._embedded = embedded_digests(hashes)

    # -- the cluster: read, hash, decode and embed, in any order ---------------------------------------------

    def _results(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        data = self.ray.data
        context = data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows progress
        plan = self.plan
        blocks = min(len(rows), max(2 * plan.workers, math.ceil(len(rows) / self.batch_size)))
        actors = min(plan.workers, blocks)  # no model loaded for an actor that would get no work
        known = self.ray.put(self._embedded)  # once, not once per actor
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for restarts and retries; it warns that the keywords will go.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = self._pipeline(data, rows, blocks, actors, known)
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        yield from self._watched(batches)

    def _pipeline(self, data: Any, rows: list[dict[str, Any]], blocks: int, actors: int, known: Any) -> Any:
        plan = self.plan
        return data.from_items(rows, override_num_blocks=blocks).map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "args": self.args,
                "device": plan.device,
                "batch_size": self.batch_size,
                "threads": plan.threads,
                "known": [known],
                "thumbnail_sides": self.thumbnail_sides,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=data.ActorPoolStrategy(size=actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
        )

    def _watched(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """`batches`, pulled in a thread, while this one checks that the head still answers: when it is
        lost, Ray's driver neither raises nor returns, and kills the process after a minute."""
        gcs = _gcs_address(self.ray)
        handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def pump() -> None:
            try:
                for batch in batches:
                    while not stop.is_set():
                        try:
                            handoff.put(("batch", batch), timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        break
                item: tuple[str, Any] = ("end", None)
            except Exception as exc:
                item = ("error", exc)
            finally:
                close = getattr(batches, "close", None)
                if close is not None and stop.is_set():
                    close()
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=pump, name="retrieval-ray-results", daemon=True)
        thread.start()
        silent_since: float | None = None
        try:
            while True:
                try:
                    kind, value = handoff.get(timeout=1.0)
                except queue.Empty:
                    if gcs is None:
                        continue
                    if _answers(*gcs, timeout_s=1.0):
                        silent_since = None
                    else:
                        now = time.monotonic()
                        silent_since = silent_since or now
                        if now - silent_since >= HEAD_LOST_S:
                            raise ClusterError(
                                f"lost the Ray cluster's head at {gcs[0]}:{gcs[1]} (no answer for "
                                f"{HEAD_LOST_S:.0f} s); what was recorded is saved, run the ingest again "
                                "once the cluster is back"
                            ) from None
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise _cluster_failure(value) from None
                yield value
        finally:
            stop.set()

    # -- driver side: in the listing's order ----------------------------------------------------------------

    def prepared(
        self, todo: list[FoundFile], lookup: LookupFn, decoded: DecodedFn | None = None
    ) -> Generator[Prepared, None, None]:
        """See `PrepareStage.prepared`; files count as decoded when their batch comes back from the cluster
        (decoded and embedded there)."""
        tell = decoded or (lambda _n: None)
        rows = [
            {"seq": i, "path": str(found.path), "size": found.size, "mtime_ns": found.mtime_ns}
            for i, found in enumerate(todo)
        ]
        arrived: dict[int, Prepared] = {}
        position = 0

        def ready() -> Iterator[Prepared]:
            """The files from `position` on whose results are in, in order."""
            nonlocal position
            while position in arrived:
                prep = arrived.pop(position)
                if prep.error is None:
                    # Content embedded before, or earlier in this run (a copy): linked, not embedded again.
                    prep.known_id = lookup(prep.hash)
                    if prep.known_id is not None:
                        prep.payload = None
                    elif prep.payload is None:  # skipped as known by the worker, yet not in the index now
                        prep = Prepared(prep.found, prep.hash, error=CHANGED)
                position += 1
                yield prep

        results = self._results(rows) if rows else iter(())
        try:
            for batch in results:
                seqs = batch["seq"].tolist()
                for i, seq in enumerate(seqs):
                    arrived[seq] = self._received(todo[seq], batch, i)
                tell(len(seqs))
                yield from ready()
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        if position < len(todo):
            raise ClusterError(
                f"the Ray cluster returned no result for {len(todo) - position - len(arrived)} files; "
                "what was recorded is saved, run the ingest again"
            )

    def _received(self, found: FoundFile, batch: dict[str, np.ndarray], i: int) -> Prepared:
        error, digest = str(batch["error"][i]), str(batch["hash"][i])
        if error:
            return Prepared(found, "", error=error)
        if bool(batch["known"][i]):
            return Prepared(found, digest)
        captured = str(batch["captured_at"][i])
        photo = str(batch["photo"][i]) if "photo" in batch else ""
        return Prepared(
            found,
            digest,
            payload=np.asarray(batch["vector"][i], dtype=np.float32),
            width=int(batch["width"][i]),
            height=int(batch["height"][i]),
            format=str(batch["format"][i]),
            captured_at=datetime.fromisoformat(captured) if captured else None,
            thumbnails={
                side: bytes(data)
                for side in self.thumbnail_sides
                if (data := batch[f"thumb_{side}"][i] if f"thumb_{side}" in batch else b"")
            },
            photo=PhotoInfo(**json.loads(photo)) if photo else None,
        )

    def vectors(self, payloads: list[Any]) -> np.ndarray:
        vectors = np.stack(payloads).astype(np.float32, copy=False)
        return self.embedder.project(vectors)


def _gcs_address(ray: ModuleType) -> tuple[str, int] | None:
    """The head's GCS (host, port) that this driver is connected to; None when Ray does not say."""
    try:
        host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
        return (host, int(port)) if host else None
    except Exception:
        return None


def _fit(capacities: list[float], count: int, *, whole: bool = True) -> float:
    """The largest share of one node's `capacities` (CPUs or GPUs per node) with which `count` actors fit on
    the nodes, each actor on one node; whole units while that is at least one (Ray schedules them more
    simply). A share of the cluster's total could be more than any one node has, and never be scheduled."""
    best = 0.0
    for capacity in capacities:
        for per_node in range(1, count + 1):
            share = capacity / per_node
            if share <= best:
                break
            if sum(math.floor(c / share + 1e-9) for c in capacities) >= count:
                best = share
                break
    return _whole(best) if whole else best


def _whole(share: float) -> float:
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
    anything else (a lost node, an actor that kept dying) as a ClusterError."""
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
