"""`retrieval` command line: each command opens an Engine, makes one library call and renders the result."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from retrieval.errors import IndexCorruptError, RetrievalError
from retrieval.settings import ray_address_from_env, token_from_env

# Only what every command needs is imported here: the engine (numpy, SQLAlchemy) loads when a command opens
# an index, and a model's packages (torch, open_clip) when one embeds, so `--help` and `stats` start fast
# (BENCHMARKS.md, "CLI start"; tests/test_first_run.py).
if TYPE_CHECKING:
    from rich.console import Console

    from retrieval.engine import Engine, Filter
    from retrieval.ingest.pipeline import IngestProgress, IngestReport
    from retrieval.ingest.watch import WatchBatch
    from retrieval.maps.layout import MapProgress
    from retrieval.quality.evaluation import EvalReport
    from retrieval.search.queries import Query, SearchHit

app = typer.Typer(
    name="retrieval",
    help="Index a photo folder and search it by text, by example image, or for more like an indexed image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: option help holds brackets ("clip[:ARCH[/TAG]]", "retrieval[ray]") that Rich markup
    # would take for tags ("--help" failed with MarkupError).
    rich_markup_mode=None,
)


class _LazyConsole:
    """A rich Console made on first use: rich costs ~50 ms to import, which `--help` and a command that
    only fails need not pay. Attribute reads and writes go to the Console (`.real` is the Console itself)."""

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_console", None)

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            object.__setattr__(self, "_console", Console(**self._options))
        return self._console

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # own state not set yet (a copy being made): no Console to ask
            raise AttributeError(name)
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)


out = _LazyConsole(soft_wrap=True)  # long paths stay on one line, for copy and paste
err = _LazyConsole(stderr=True, soft_wrap=True)

IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Index name (a folder under the home).")]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Folder holding the indexes [default: $RETRIEVAL_HOME, else the user data folder, "
        "~/.local/share/retrieval on Linux].",
        file_okay=False,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Embedder: clip[:ARCH[/TAG]], resnet18..resnet152, classic [default: clip]."
    ),
]
PretrainedOpt = Annotated[
    str,
    typer.Option("--pretrained", help="Weights tag, 'default', or 'none' for random weights (testing only)."),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="Local checkpoint file instead of downloaded weights.", exists=True, dir_okay=False
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Forward arithmetic: fp32, int8 (CPU, faster, vectors within ~0.9995 cosine) or fp16 (CUDA); "
        "an index keeps the one it was built with [default: the index's, else fp32].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KOpt = Annotated[int, typer.Option("-k", "--k", help="Number of results.", min=1, max=10_000)]
MinScoreOpt = Annotated[
    float | None, typer.Option("--min-score", help="Drop results scoring below this cosine.")
]

# Filters (retrieval/metadata/filters.py): taken as text and read by the library's one parser, so that a
# malformed value is the same one line, exit 2, here and in the HTTP API.
InOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--in",
        help="Only images in this folder or below (relative to the indexed folder, or absolute); repeat "
        "for several.",
    ),
]
AfterOpt = Annotated[
    str | None,
    typer.Option("--after", help="Only photos taken (else modified) on or after this day, YYYY-MM-DD."),
]
BeforeOpt = Annotated[
    str | None,
    typer.Option("--before", help="Only photos taken (else modified) before this day, YYYY-MM-DD."),
]
CameraOpt = Annotated[
    str | None, typer.Option("--camera", help="Only photos whose camera make or model contains this text.")
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Only these formats, comma-separated: jpeg,png,webp,heic,...")
]
MinWidthOpt = Annotated[str | None, typer.Option("--min-width", help="Only images at least this wide (px).")]
MinHeightOpt = Annotated[
    str | None, typer.Option("--min-height", help="Only images at least this tall (px).")
]
NearOpt = Annotated[
    str | None, typer.Option("--near", help="Only photos taken near LAT,LON (with --within-km; EXIF GPS).")
]
WithinOpt = Annotated[str | None, typer.Option("--within-km", help="With --near: the distance in km.")]


def _filter(
    folders: list[str] | None,
    after: str | None,
    before: str | None,
    camera: str | None,
    formats: str | None,
    min_width: str | None,
    min_height: str | None,
    near: str | None,
    within_km: str | None,
) -> Filter | None:
    """The filter options as one Filter (None when none is given); a malformed one is one line, exit 2."""
    from retrieval.engine import parse_filter

    with _one_line_errors():
        return parse_filter(
            folders=folders,
            after=after,
            before=before,
            camera=camera,
            formats=formats,
            min_width=min_width,
            min_height=min_height,
            near=near,
            within_km=within_km,
        )


def _show_warning(message: Any, category: type[Warning], *_args: Any, **_kw: Any) -> None:
    err.print(f"[yellow]warning:[/] {_safe(message)}", highlight=False)


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _safe(text: object) -> str:
    """Untrusted text (a file name, a library message) made safe for the terminal: control characters,
    escape sequences and bidi overrides shown as visible escapes (`\\x1b`, `\\n`, `\\u202e`), Rich
    markup escaped. Every path and message reaches the terminal through this; `--json` keeps exact names."""
    from rich.markup import escape

    shown = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    return escape(shown)


def _fail(message: str, code: int) -> NoReturn:
    """The one way a command ends with an error: one line on stderr, the exit code."""
    err.print(f"[red]error:[/] {_safe(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (systemd, docker stop, kill) stops a long command as Ctrl-C does, saving what was done,
    instead of ending it mid-batch: it runs whatever handles Ctrl-C at that moment (the engine's "stop
    between files" during an ingest), else raises KeyboardInterrupt, also where Ctrl-C is ignored (a
    command started in the background by a script or nohup)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, frame: object) -> None:
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(on_ctrl_c) and on_ctrl_c is not signal.default_int_handler:
            on_ctrl_c(signal.SIGINT, frame)  # type: ignore[arg-type]
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Library errors become one line and their exit code (see retrieval.errors)."""
    warnings.showwarning = _show_warning
    try:
        yield
    except RetrievalError as exc:
        _fail(str(exc), exc.exit_code)


@contextmanager
def _engine(index: str, home: Path | None, **kwargs: Any) -> Iterator[Engine]:
    """Open the engine; any library error becomes one line on stderr and its exit code."""
    from retrieval.engine import Engine

    with _one_line_errors(), Engine(index, home=home, **kwargs) as engine:
        yield engine


def _pretrained(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _ray_address(ray: bool | None, address: str | None) -> str | None:
    """--no-ray: ingest here; an address (option or $RETRIEVAL_RAY_ADDRESS): that cluster; --ray alone: a
    runtime on this machine."""
    if ray is False:
        return None
    return address or ray_address_from_env() or ("local" if ray else None)


def _bar(enabled: bool) -> AbstractContextManager[Callable[[IngestProgress], None]]:
    """The ingest's (or eval's) progress bar on stderr (cli/progress.py, loaded only here)."""
    from retrieval_cli.progress import ingest_bar

    return ingest_bar(enabled, err.real, _safe)


def _map_spinner(enabled: bool) -> AbstractContextManager[Callable[[MapProgress], None]]:
    """The map's stages on stderr, as a spinner (cli/progress.py, loaded only here)."""
    from retrieval_cli.progress import map_spinner

    return map_spinner(enabled, err.real, _safe)


def _interrupted_summary(report: IngestReport | None) -> str:
    """The one line after Ctrl-C: what the stopped ingest saved (a stop before it recorded anything, while
    the model loaded or the folder was listed, has no report)."""
    if report is None:
        return "interrupted: work done so far is saved; run the same command to finish"
    failed = f", {len(report.failed)} failed" if report.failed else ""
    return (
        f"interrupted after {report.seconds:.1f}s: saved {report.added + report.updated} files "
        f"({report.embedded} embedded, {report.linked} linked to an existing image{failed}); "
        "run the same command to finish"
    )


def _print_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        payload = {k: v for k, v in vars(report).items()}
        out.print_json(json.dumps(payload))
        return
    out.print(_report_line(report), highlight=False)
    if report.refreshed:
        out.print(f"  metadata read again for {report.refreshed} images", highlight=False)
    for path, reason in report.failed[:50]:
        out.print(f"  failed: {_safe(path)}: {_safe(reason)}", highlight=False, soft_wrap=True)
    if len(report.failed) > 50:
        out.print(
            f"  ... and {len(report.failed) - 50} more failures (`retrieval stats --failures` lists all)"
        )
    for path, reason in report.skipped[:20]:
        out.print(f"  skipped: {_safe(path)}: {_safe(reason)}", highlight=False, soft_wrap=True)


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).", file_okay=False)],
    index: IndexOpt = "default",
    home: HomeOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = "default",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="Vector store of a new index: hnswlib (default) or milvus."),
    ] = None,
    milvus_uri: Annotated[
        str | None,
        typer.Option(
            "--milvus-uri",
            help="Milvus server of a new milvus index [default: $RETRIEVAL_MILVUS_URI, else Milvus Lite "
            "inside the index folder].",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, max=64, help="Decode threads; with --ray, Ray actors (a model each)."
        ),
    ] = None,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Decode and embed on Ray (pip install 'retrieval[ray]'): a runtime started on this machine, "
            "or the cluster at --ray-address. --no-ray ingests here even when an address is set.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to ingest on (implies --ray): HOST:6379 (its head; not ray://), or "
            "auto (the one `ray start` runs on this machine). Default: $RETRIEVAL_RAY_ADDRESS.",
        ),
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune/--no-prune", help="Forget files deleted from the folder.")
    ] = True,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry files that failed before.")
    ] = False,
    thumbnails: Annotated[
        bool,
        typer.Option(
            "--thumbnails/--no-thumbnails",
            help="Make the thumbnails that maps and `serve` show while decoding (a few ms an image); "
            "without, they are made when first shown.",
        ),
    ] = True,
    refresh_metadata: Annotated[
        bool,
        typer.Option(
            "--refresh-metadata",
            help="Read every image's metadata (EXIF camera, date, place; size; folder) again from its file, "
            "keeping its vector: once, for an index made before a filter's column existed.",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Index the images under FOLDER; re-running picks up new, changed, moved and deleted files."""
    with _engine(
        index,
        home,
        model=model,
        pretrained=_pretrained(pretrained),
        weights=weights,
        device=device,
        batch_size=batch_size,
        store=store,
        milvus_uri=milvus_uri,
        precision=precision,
    ) as engine:
        stopped: KeyboardInterrupt | None = None
        with _bar(progress and not as_json) as update, _sigterm_as_ctrl_c():
            try:
                report = engine.ingest(
                    folder,
                    prune=prune,
                    progress=update,
                    workers=workers,
                    retry_failed=retry_failed,
                    ray_address=_ray_address(ray, ray_address),
                    thumbnails=thumbnails,
                    refresh_metadata=refresh_metadata,
                )
            except KeyboardInterrupt as exc:
                stopped = exc
        if stopped is not None:  # printed under the bar's last state
            err.print(_interrupted_summary(getattr(stopped, "report", None)), highlight=False)
            raise typer.Exit(130) from None
        _print_report(report, as_json)
        if report.failed:
            raise typer.Exit(1)


def _report_line(report: IngestReport) -> str:
    unsupported = f", {report.unsupported} skipped (not a supported image type)" if report.unsupported else ""
    return (
        f"{_safe(report.root)}: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged, {len(report.failed)} failed{unsupported} "
        f"({report.embedded} embedded, {report.linked} linked to an existing image) in {report.seconds:.1f}s"
    )


def _print_batch(batch: WatchBatch) -> None:
    """One line per batch of `watch` (and `serve --watch`), stamped with the local time."""
    from datetime import datetime

    stamp = datetime.now().strftime("%H:%M:%S")
    if batch.report is None:
        out.print(f"{stamp} {batch.kind}: {_safe(batch.note)}", highlight=False, soft_wrap=True)
        return
    events = f" ({batch.events} events)" if batch.events else ""
    out.print(f"{stamp} {batch.kind}{events}: {_report_line(batch.report)}", highlight=False, soft_wrap=True)
    for path, reason in batch.report.failed[:5]:
        out.print(f"  failed: {_safe(path)}: {_safe(reason)}", highlight=False, soft_wrap=True)


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder of photos to keep indexed.", file_okay=False)],
    index: IndexOpt = "default",
    home: HomeOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = "default",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="Decode threads.")] = None,
    debounce: Annotated[
        float,
        typer.Option("--debounce", min=0, help="Seconds without a file event before a batch is ingested."),
    ] = 2.0,
    max_delay: Annotated[
        float,
        typer.Option(
            "--max-delay", min=0, help="Seconds after a batch's first event by which it is ingested."
        ),
    ] = 60.0,
    poll: Annotated[
        bool | None,
        typer.Option(
            "--poll/--no-poll",
            help="Scan for changes instead of the OS's file events [default: only on network file systems "
            "(NFS, SMB, sshfs) and where the OS refuses more watches].",
        ),
    ] = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.1,
            help="Seconds between scans, and between looks at a folder that went away.",
        ),
    ] = 5.0,
) -> None:
    """Keep an index up to date with FOLDER: ingest what changed, in batches, until Ctrl-C."""
    with _engine(
        index,
        home,
        model=model,
        pretrained=_pretrained(pretrained),
        weights=weights,
        device=device,
        batch_size=batch_size,
        precision=precision,
    ) as engine:
        out.print(f"watching {_safe(folder)} for index {_safe(repr(index))}; Ctrl-C stops", highlight=False)
        with _sigterm_as_ctrl_c():
            result = engine.watch(
                folder,
                quiet=debounce,
                max_delay=max(max_delay, debounce),
                poll_interval=poll_interval,
                polling=poll,
                on_batch=_print_batch,
                workers=workers,
            )
        if result.interrupted:
            err.print("interrupted: work done so far is saved; run the same command to finish")
            raise typer.Exit(130)
        plural = "" if result.batches == 1 else "s"
        out.print(f"stopped watching after {result.batches} ingest{plural}", highlight=False)


@app.command()
def export(
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Parquet file to write (replaced if it exists).")
    ],
    index: Annotated[str, typer.Argument(help="Index name (a folder under the home).")] = "default",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write an index to Parquet: id, path, metadata columns and the float32 vector of every image."""
    with _engine(index, home) as engine:
        report = engine.export(out_path)
    if as_json:
        sys.stdout.write(json.dumps(vars(report), indent=2) + "\n")
        return
    left_out = f" ({report.skipped} removed by an ingest meanwhile, left out)" if report.skipped else ""
    out.print(
        f"wrote {_safe(report.path)}: {report.rows} images, {report.dim}-dim vectors, "
        f"{_human(report.bytes)} in {report.seconds:.1f}s{left_out}",
        highlight=False,
        soft_wrap=True,
    )


def _print_hits(query: Query, hits: list[SearchHit], as_json: bool) -> None:
    if as_json:
        results = [
            {"id": h.id, "path": h.path, "score": round(h.score, 6), "width": h.width, "height": h.height}
            for h in hits
        ]
        sys.stdout.write(json.dumps({"query": query.describe(), "results": results}, indent=2) + "\n")
        return
    if not hits:
        out.print("no results")
        return
    # Plain columns, whole paths: a table would wrap or cut the paths people copy and paste.
    out.print(f"{'rank':>4}  {'score':>6}  {'id':>7}  path", style="bold", highlight=False)
    for h in hits:
        out.print(f"{h.rank:>4}  {h.score:6.4f}  {h.id:>7}  {_safe(h.path)}", highlight=False, soft_wrap=True)


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="Text to search for (CLIP indexes).")] = None,
    also_text: Annotated[list[str] | None, typer.Option("--text", help="More text to add.")] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", help="Example image to add.", dir_okay=False)
    ] = None,
    like: Annotated[
        list[str] | None, typer.Option("--like", help="Indexed image (id or path) to add.")
    ] = None,
    minus: Annotated[list[str] | None, typer.Option("--minus", help="Text to subtract.")] = None,
    minus_image: Annotated[
        list[Path] | None, typer.Option("--minus-image", help="Image to subtract.")
    ] = None,
    k: KOpt = 10,
    min_score: MinScoreOpt = None,
    folders: InOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    camera: CameraOpt = None,
    formats: FormatOpt = None,
    min_width: MinWidthOpt = None,
    min_height: MinHeightOpt = None,
    near: NearOpt = None,
    within_km: WithinOpt = None,
    index: IndexOpt = "default",
    home: HomeOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search by text and/or example images; parts are added or (--minus) subtracted."""
    from retrieval.search.queries import Query, QueryPart

    flt = _filter(folders, after, before, camera, formats, min_width, min_height, near, within_km)
    with _engine(index, home, model=model, weights=weights, device=device, precision=precision) as engine:
        parts = [QueryPart("text", t) for t in ([text] if text is not None else []) + (also_text or [])]
        parts += [QueryPart("image", p.expanduser().resolve()) for p in image or []]
        parts += [engine.resolve_image_ref(ref) for ref in like or []]
        parts += [QueryPart("text", t, -1) for t in minus or []]
        parts += [QueryPart("image", p.expanduser().resolve(), -1) for p in minus_image or []]
        query = Query(tuple(parts))
        hits = engine.search(query, k=k, min_score=min_score, filter=flt)
        _print_hits(query, hits, as_json)


@app.command()
def similar(
    ref: Annotated[str, typer.Argument(help="An indexed image's id or path, or any image file.")],
    k: KOpt = 10,
    min_score: MinScoreOpt = None,
    folders: InOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    camera: CameraOpt = None,
    formats: FormatOpt = None,
    min_width: MinWidthOpt = None,
    min_height: MinHeightOpt = None,
    near: NearOpt = None,
    within_km: WithinOpt = None,
    index: IndexOpt = "default",
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """More like this: images near an indexed image (itself left out) or near an image file."""
    from retrieval.search.queries import Query

    flt = _filter(folders, after, before, camera, formats, min_width, min_height, near, within_km)
    with _engine(index, home, device=device) as engine:
        query = Query.of(engine.resolve_image_ref(ref))
        hits = engine.search(query, k=k, min_score=min_score, filter=flt)
        _print_hits(query, hits, as_json)


@app.command("map")
def map_command(
    text: Annotated[str | None, typer.Argument(help="Text whose results to map (CLIP indexes).")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Map the results of this example image.", dir_okay=False)
    ] = None,
    similar: Annotated[
        str | None,
        typer.Option("--similar", help="Map images like this one: an indexed image's id or path, or a file."),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Number of results to map.", min=1, max=10_000)] = 200,
    expand: Annotated[
        bool, typer.Option("--expand", help="Also map each result's own nearest neighbours, for context.")
    ] = False,
    neighbours: Annotated[
        int, typer.Option("--neighbours", help="With --expand: neighbours added per result.", min=1, max=100)
    ] = 5,
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write it: .png, .svg or .html.", dir_okay=False)
    ] = Path("map.png"),
    seed: Annotated[int, typer.Option("--seed", help="Layout seed: the same seed draws the same map.")] = 0,
    colour: Annotated[
        Literal["cluster", "score"],
        typer.Option("--colour", "--color", help="Frame colour by cluster or score."),
    ] = "cluster",
    clusters: Annotated[
        int | None,
        typer.Option("--clusters", help="Number of k-means clusters [default: chosen by silhouette].", min=1),
    ] = None,
    perplexity: Annotated[
        float | None,
        typer.Option(
            "--perplexity",
            help="t-SNE perplexity [default: points/10 within 5..30, points/100 beyond 3,000, at most 50].",
        ),
    ] = None,
    folders: InOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    camera: CameraOpt = None,
    formats: FormatOpt = None,
    min_width: MinWidthOpt = None,
    min_height: MinHeightOpt = None,
    near: NearOpt = None,
    within_km: WithinOpt = None,
    index: IndexOpt = "default",
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Draw a t-SNE map of a query's results: thumbnails at their points, clusters, the query marked."""
    if sum(q is not None for q in (text, image, similar)) != 1:
        err.print(
            "[red]error:[/] give exactly one of QUERY, --image PATH or --similar PATH|ID", highlight=False
        )
        raise typer.Exit(2)
    from retrieval.maps.render import map_format
    from retrieval.search.queries import Query, QueryPart

    flt = _filter(folders, after, before, camera, formats, min_width, min_height, near, within_km)
    with _engine(index, home, device=device) as engine:
        map_format(out_path)  # a bad file name fails now, not after the layout
        if text is not None:
            part = QueryPart("text", text)
        elif image is not None:
            part = QueryPart("image", image.expanduser().resolve())
        else:
            part = engine.resolve_image_ref(str(similar))
        with _map_spinner(not as_json) as stage:
            m = engine.map(
                Query.of(part),
                n=n,
                expand=neighbours if expand else 0,
                seed=seed,
                perplexity=perplexity,
                clusters=clusters,
                filter=flt,
                progress=stage,
            )
            if not m.points:  # a filter that allows no image: an empty result, as a search's
                if as_json:
                    sys.stdout.write(json.dumps({**m.to_dict(), "out": None}, indent=2) + "\n")
                else:
                    _say(f"no images match the filter: nothing to map for {m.title}, no file written")
                return
            rendered = engine.render_map(m, out_path, colour_by=colour, progress=stage)
        if as_json:
            payload = {**m.to_dict(), "out": str(rendered.path), "render_seconds": round(rendered.seconds, 4)}
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
            return
        context = f" + {m.n_context} of their neighbours" if m.n_context else ""
        out.print(
            f"wrote {_safe(rendered.path)}: {m.n_results} results{context} and the query; t-SNE perplexity "
            f"{m.params.perplexity:g}, trustworthiness {m.trustworthiness:.3f}, {m.clusters} clusters; "
            f"layout {m.seconds['layout']:.1f}s, drawing {rendered.seconds:.1f}s",
            highlight=False,
            soft_wrap=True,
        )
        out.print(
            "trustworthiness: how often images close on the map are also close for the model "
            "(1 = always, about 0.5 = a random layout)",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def serve(
    index: IndexOpt = "default",
    home: HomeOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; loopback unless another is asked for.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = 8000,
    device: DeviceOpt = "auto",
    weights: WeightsOpt = None,
    precision: PrecisionOpt = None,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Also answer to this host name, as clients type it (repeatable); requests naming any other "
            "host are refused (DNS rebinding). Loopback names and the --host address are always answered.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Require this token on every API call [default: $RETRIEVAL_TOKEN]; open the printed "
            "address (/?token=...) in a browser, or send Authorization: Bearer TOKEN.",
        ),
    ] = None,
    max_heavy: Annotated[
        int | None,
        typer.Option(
            "--max-heavy", min=1, max=64, help="Image searches and maps at once; more get 503 [default: 2]."
        ),
    ] = None,
    heavy_timeout: Annotated[
        float | None,
        typer.Option(
            "--heavy-timeout", min=1, help="Seconds one image search or map may take [default: 60]."
        ),
    ] = None,
    watch_folder: Annotated[
        Path | None,
        typer.Option(
            "--watch",
            help="Also keep the index up to date with this folder (as `retrieval watch`), in this process.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Serve an index over HTTP: a search page at /, a JSON API under /api (schema at /openapi.json)."""
    try:
        import uvicorn

        from retrieval.serve.app import create_app, uvicorn_options
    except ImportError as exc:  # a broken install: the server's packages are dependencies of retrieval
        _fail(f"serving needs {exc.name}, which is missing: reinstall retrieval (pip install retrieval)", 2)
    token = token or token_from_env()
    with _engine(index, home, device=device, weights=weights, precision=precision) as engine:
        # Refuses an exposed address without allowed names or a token before the model loads.
        served = create_app(
            engine,
            host=host,
            allowed_hosts=allowed_hosts or [],
            token=token,
            max_heavy=max_heavy,
            heavy_timeout=heavy_timeout,
        )
        engine.warm_up()  # a missing index or model fails here, in one line, not on the first request
        if host not in {"127.0.0.1", "localhost", "::1"}:
            risk = (
                "the token and the photos travel unencrypted: put a reverse proxy with TLS in front"
                if token
                else "anyone who can reach it can search and download these photos"
            )
            err.print(f"warning: listening on {host}: {risk}", highlight=False)
        shown = f"[{host}]" if ":" in host else host
        address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        out.print(
            f"serving index {_safe(repr(index))} on {_safe(address)} "
            "(API schema at /openapi.json); Ctrl-C stops",
            highlight=False,
        )
        with ExitStack() as watching:
            if watch_folder is not None:
                # Its own engine: it writes while the served one is searched and picks up each new generation.
                writer = watching.enter_context(
                    _engine(index, home, device=device, weights=weights, precision=precision)
                )
                watching.enter_context(writer.watching(watch_folder, on_batch=_print_batch))
                out.print(f"watching {_safe(watch_folder)}", highlight=False)
            uvicorn.run(served, host=host, port=port, log_level="warning", **uvicorn_options())


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Indexed files to forget (the files are not deleted).")],
    index: IndexOpt = "default",
    home: HomeOpt = None,
) -> None:
    """Forget files from the index without touching them on disk."""
    with _engine(index, home) as engine:
        report = engine.remove(list(paths))
        out.print(f"removed {len(report.removed)} of {len(paths)} files from index {_safe(repr(index))}")
        for path in report.not_indexed:
            out.print(f"  not in the index: {_safe(path)}", highlight=False, soft_wrap=True)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return str(n)


@app.command()
def stats(
    index: IndexOpt = "default",
    home: HomeOpt = None,
    failures: Annotated[
        bool, typer.Option("--failures", "--all", help="List every failed file, not only the first 20.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Counts, model and sizes on disk of an index, and its failed files (the first 20, or --failures)."""
    from retrieval.vectors.hnsw.tuning import Tuning

    with _engine(index, home) as engine:
        st = engine.stats(failures=None if failures or as_json else 20)
        if as_json:
            out.print_json(json.dumps(vars(st), default=str))
            return
        out.print(f"index      {_safe(st.name)} ({_safe(st.path)})", highlight=False)
        out.print(f"model      {_safe(st.embedder_id)} (dim {st.dim})", highlight=False)
        for number, folder in enumerate(st.folders):
            out.print(
                f"{'folders' if number == 0 else '':<10} {_safe(folder)}", highlight=False, soft_wrap=True
            )
        c = st.counts
        out.print(
            f"files      {c['files']} in {c['roots']} folder(s); {c['images']} distinct images, "
            f"{c['embedded']} embedded; {'unknown' if st.vectors is None else st.vectors} vectors; "
            f"{c['failures']} failed files",
            highlight=False,
        )
        if st.vectors is None:
            out.print(f"vectors    unknown: {st.store.get('unavailable')}", highlight=False, soft_wrap=True)
        out.print(
            f"on disk    database {_human(st.bytes_on_disk['database'])}, "
            f"vectors {_human(st.bytes_on_disk['vectors'])}",
            highlight=False,
        )
        tuned = Tuning.from_dict(st.store.get("tuning"))
        if tuned is not None:
            out.print(f"search     {tuned.describe()}", highlight=False)
        for path, reason in st.failures:
            out.print(f"  failed: {_safe(path)}: {_safe(reason)}", highlight=False, soft_wrap=True)
        if c["failures"] > len(st.failures):
            out.print(
                f"  ... and {c['failures'] - len(st.failures)} more (`retrieval stats --failures` lists all)",
                highlight=False,
            )


@app.command("list")
def list_command(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every index in the home: model, images, size on disk, indexed folders, last ingest."""
    from retrieval.engine import list_indexes
    from retrieval.settings import resolve_home

    with _one_line_errors():
        where = resolve_home(home)
        found = list_indexes(where)
    if as_json:
        sys.stdout.write(
            json.dumps({"home": str(where), "indexes": [vars(s) for s in found]}, indent=2) + "\n"
        )
        return
    if not found:
        out.print(f"no indexes in {_safe(where)}; build one with `retrieval ingest DIR`", highlight=False)
        return
    out.print(f"{len(found)} indexes in {_safe(where)}", highlight=False, soft_wrap=True)
    # A block per index, the folders one a line: whole paths, readable at 80 columns and in a pipe.
    for s in found:
        if s.problem is not None:
            out.print(f"{_safe(s.name)}  cannot be read: {_safe(s.problem)}", highlight=False, soft_wrap=True)
            continue
        last = s.last_ingest.replace("T", " ") + " UTC" if s.last_ingest else "never"
        out.print(
            f"{_safe(s.name)}  {_safe(s.model)}, {s.images} images, {_human(s.bytes_on_disk)}, "
            f"last ingest {last}",
            highlight=False,
            soft_wrap=True,
        )
        for folder in s.folders:
            out.print(f"  {_safe(folder)}", highlight=False, soft_wrap=True)


@app.command()
def doctor(
    index: IndexOpt = "default",
    home: HomeOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the vector index and its agreement with the database; --fix rebuilds and reconciles them."""
    with _engine(index, home) as engine:
        report = engine.doctor(fix=fix)
        if as_json:
            out.print_json(json.dumps({**vars(report), "ok": report.ok}))
        else:
            out.print(f"{report.embedded_rows} embedded images, {report.vectors} vectors")
            for problem in report.problems:
                out.print(f"  problem: {_safe(problem)}", highlight=False, soft_wrap=True)
            for repair in report.repairs:
                out.print(f"  repaired: {_safe(repair)}", highlight=False, soft_wrap=True)
            out.print("ok" if report.ok else ("fixed" if report.fixed else "run `retrieval doctor --fix`"))
        if not report.ok and not report.fixed:
            raise typer.Exit(IndexCorruptError.exit_code if report.damage else 1)


@app.command()
def demo(
    home: HomeOpt = None,
    index: IndexOpt = "demo",
    photos: Annotated[
        Path | None,
        typer.Option("--photos", help="Folder of photos [default: scikit-image's sample photos]."),
    ] = None,
) -> None:
    """Build an index from sample photos and run a text and an image query on it."""
    from retrieval.demo import run_demo

    with _one_line_errors():
        run_demo(home=home, index=index, photos=photos, say=_say)


def _print_grid(header: list[str], rows: list[list[str]]) -> None:
    """A plain table that fits the terminal (80 columns in a pipe) without cutting a cell: columns right of
    the first go in blocks as wide as the screen allows, each block repeating the first column."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    room = max(out.width, widths[0] + 2 + max(widths[1:], default=0))
    blocks: list[list[int]] = [[]]
    used = widths[0]
    for i in range(1, len(header)):
        if blocks[-1] and used + 2 + widths[i] > room:
            blocks.append([])
            used = widths[0]
        blocks[-1].append(i)
        used += 2 + widths[i]
    for number, block in enumerate(blocks):
        if number:
            out.print()
        for r, row in enumerate(cells):
            line = row[0].ljust(widths[0]) + "".join("  " + row[i].rjust(widths[i]) for i in block)
            out.print(_safe(line.rstrip()), style="bold" if r == 0 else None, highlight=False)


def _print_eval(report: EvalReport, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    where = (
        f"{report.n_measured} held-out images (fitted on the other {report.n_fit})"
        if report.held_out
        else f"all {report.n_measured} images"
    )
    out.print(
        f"{_safe(report.embedder_id)}, {len(report.classes)} classes, measured on {where}",
        highlight=False,
        soft_wrap=True,
    )
    # One row per measure, one column per method: it fits 80 columns however many cut-offs are asked for.
    ks, methods = report.ks, report.methods

    def marked(value: float, held_out: bool) -> str:
        return f"{value:.3f}" + ("" if held_out else "*")

    found, centroid = [m.retrieval for m in methods], [m.centroid for m in methods]
    rows = [["dim", *(str(m.dim) for m in methods)]]
    rows += [[f"precision@{k}", *(marked(r.precision[k], r.held_out) for r in found)] for k in ks]
    rows += [[f"recall@{k}", *(marked(r.recall[k], r.held_out) for r in found)] for k in ks]
    rows += [[f"mAP@{k}", *(marked(r.map[k], r.held_out) for r in found)] for k in ks]
    rows.append(["centroid acc", *(marked(c.accuracy, c.held_out) for c in centroid)])
    rows.append(["mean P", *(marked(c.mean_precision, c.held_out) for c in centroid)])
    rows.append(["mean R", *(marked(c.mean_recall, c.held_out) for c in centroid)])
    _print_grid(["", *(m.name for m in methods)], rows)
    out.print("\nnearest centroid, per class (precision, recall):")
    per_class = []
    for i, name in enumerate(report.classes):
        cells = [f"{v[i]:.3f}" for m in methods for v in (m.centroid.precision, m.centroid.recall)]
        per_class.append([name, str(report.class_sizes[i]), *cells])
    _print_grid(["class", "images", *(f"{m.name} {pr}" for m in methods for pr in ("P", "R"))], per_class)
    for m in methods:
        out.print(f"\nconfusion ({m.name}): rows are true classes, columns assigned classes")
        confusion = [
            [name[:12], *(str(v) for v in row)]
            for name, row in zip(report.classes, m.centroid.confusion, strict=True)
        ]
        _print_grid(["", *(name[:8] for name in report.classes)], confusion)
    if any(not (m.retrieval.held_out and m.centroid.held_out) for m in methods):
        out.print("\n* measured on the images it was fitted on, so optimistic;")
        out.print("  pass --split 0.3 for held-out figures")
    for path, reason in report.failed[:20]:
        out.print(f"  failed: {_safe(path)}: {_safe(reason)}", highlight=False, soft_wrap=True)


@app.command("eval")
def eval_command(
    folder: Annotated[
        Path, typer.Argument(help="Folder with one sub-folder of images per class.", file_okay=False)
    ],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = "default",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    k: Annotated[str, typer.Option("-k", "--k", help="Cut-offs, comma-separated.")] = "1,5,10",
    split: Annotated[
        float | None,
        typer.Option("--split", help="Hold out this share of each class; fit on the rest, measure on it."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and of the head.")] = 0,
    compare: Annotated[
        bool, typer.Option("--compare", help="Raw vs PCA vs LDA vs triplet head side by side.")
    ] = False,
    projection: Annotated[
        list[str] | None, typer.Option("--projection", help="Also measure pca, lda or head.")
    ] = None,
    dims: Annotated[
        int | None, typer.Option("--dims", min=1, help="Output dims of PCA and head [default: 64].")
    ] = None,
    head_steps: Annotated[
        int | None,
        # The default is HeadParams.steps, written out so that `--help` need not import the library.
        typer.Option(
            "--head-steps", min=1, max=100_000, help="Training steps of the triplet head [default: 400]."
        ),
    ] = None,
    save_projection: Annotated[
        str | None,
        typer.Option(
            "--save-projection", help="Fit pca, lda or head (on the training part) and start --index with it."
        ),
    ] = None,
    index: Annotated[
        str | None, typer.Option("--index", "-i", help="New index for --save-projection.")
    ] = None,
    home: HomeOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 32,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Measure retrieval on a labelled FOLDER: precision/recall/mAP@k and a nearest-centroid report."""
    from retrieval.engine import evaluate, parse_cutoffs
    from retrieval.ingest.pipeline import IngestProgress

    with _one_line_errors():
        with _bar(progress and not as_json) as update:
            report = evaluate(
                folder,
                model=model,
                pretrained=_pretrained(pretrained),
                weights=weights,
                device=device,
                precision=precision,
                ks=parse_cutoffs(k),
                split=split,
                seed=seed,
                compare=compare,
                projections=projection,
                dims=dims,
                head_steps=head_steps,
                save_projection=save_projection,
                index=index,
                home=home,
                batch_size=batch_size,
                progress=lambda done, total: update(IngestProgress("embed", done, total)),
            )
        _print_eval(report, as_json)
        if save_projection and not as_json:
            out.print(
                f"index {_safe(repr(index))} starts with this {_safe(save_projection)} projection; "
                f"fill it with `retrieval ingest DIR --index {_safe(index)}`",
                highlight=False,
                soft_wrap=True,
            )


@app.command()
def duplicates(
    index: IndexOpt = "default",
    home: HomeOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", min=-1.0, max=1.0, help="Cosine for copies [default: per model]."),
    ] = None,
    # Written out so that --help imports no library module; tests/test_first_run.py holds it to the library's.
    neighbours: Annotated[
        int, typer.Option("--neighbours", min=1, max=1000, help="Neighbours each image asks for.")
    ] = 20,
    folders: InOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    camera: CameraOpt = None,
    formats: FormatOpt = None,
    min_width: MinWidthOpt = None,
    min_height: MinHeightOpt = None,
    near: NearOpt = None,
    within_km: WithinOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Groups of near-duplicate images (resized, re-compressed, cropped copies) in an index."""
    flt = _filter(folders, after, before, camera, formats, min_width, min_height, near, within_km)
    with _engine(index, home) as engine:
        report = engine.duplicates(threshold=threshold, neighbours=neighbours, filter=flt)
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
            return
        out.print(
            f"{len(report.groups)} groups of copies among {report.images} images "
            f"(cosine >= {report.threshold:.3f}, {report.neighbours} neighbours each)",
            highlight=False,
        )
        from rich.table import Table

        table = Table("group", "files", "weakest", "id", box=None, header_style="bold")
        table.add_column("path", overflow="fold")
        for number, group in enumerate(report.groups, 1):
            first = True
            for member in group.members:
                for path in member.paths:
                    head = (str(number), str(group.files), f"{group.weakest:.3f}") if first else ("", "", "")
                    table.add_row(*head, str(member.id), _safe(path))
                    first = False
        out.print(table)


def _say(line: str) -> None:
    out.print(_safe(line), highlight=False, soft_wrap=True)


def run() -> None:
    """Console-script entry point."""
    # open_clip logs its own "no pretrained weights" line through the root logger; our warning says it once.
    logging.getLogger().setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    run()
