"""`retrieval` command line: each command opens an Engine, makes one library call and renders the result."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from retrieval.engine import Engine
from retrieval.errors import RetrievalError
from retrieval.ingest import IngestProgress, IngestReport
from retrieval.search import Query, QueryPart, SearchHit

app = typer.Typer(
    name="retrieval",
    help="Index a photo folder and search it by text, by example image, or for more like an indexed image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Index name (a folder under the home).")]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Folder holding the indexes [default: $RETRIEVAL_HOME or ./indexes].", file_okay=False
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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KOpt = Annotated[int, typer.Option("-k", "--k", help="Number of results.", min=1, max=10_000)]
MinScoreOpt = Annotated[
    float | None, typer.Option("--min-score", help="Drop results scoring below this cosine.")
]


def _show_warning(message: Any, category: type[Warning], *_args: Any, **_kw: Any) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


@contextmanager
def _engine(index: str, home: Path | None, **kwargs: Any) -> Iterator[Engine]:
    """Open the engine; any library error becomes one line on stderr and its exit code."""
    warnings.showwarning = _show_warning
    try:
        with Engine(index, home=home, **kwargs) as engine:
            yield engine
    except RetrievalError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _pretrained(value: str) -> str | None:
    return None if value.lower() == "none" else value


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "", style="cyan")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[IngestProgress], None]]:
    if not enabled:
        yield lambda _p: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def update(p: IngestProgress) -> None:
            if p.phase not in tasks:
                tasks[p.phase] = bar.add_task(p.phase, total=p.total)
            bar.update(tasks[p.phase], completed=p.done, total=p.total)

        yield update


def _print_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        payload = {k: v for k, v in vars(report).items()}
        out.print_json(json.dumps(payload))
        return
    out.print(
        f"{report.root}: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged, {len(report.failed)} failed "
        f"({report.embedded} embedded, {report.linked} linked to an existing image) in {report.seconds:.1f}s",
        highlight=False,
    )
    for path, reason in report.failed[:50]:
        out.print(f"  failed: {path}: {reason}", highlight=False, soft_wrap=True)
    if len(report.failed) > 50:
        out.print(f"  ... and {len(report.failed) - 50} more failures (see `retrieval stats`)")
    for path, reason in report.skipped[:20]:
        out.print(f"  skipped: {path}: {reason}", highlight=False, soft_wrap=True)


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).", file_okay=False)],
    index: IndexOpt = "default",
    home: HomeOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = "default",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="Decode threads.")] = None,
    prune: Annotated[
        bool, typer.Option("--prune/--no-prune", help="Forget files deleted from the folder.")
    ] = True,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry files that failed before.")
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
    ) as engine:
        with _progress_bar(progress and not as_json) as update:
            try:
                report = engine.ingest(
                    folder, prune=prune, progress=update, workers=workers, retry_failed=retry_failed
                )
            except KeyboardInterrupt:
                err.print("interrupted: work done so far is saved; run the same command to finish")
                raise typer.Exit(130) from None
        _print_report(report, as_json)
        if report.failed:
            raise typer.Exit(1)


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
    table = Table("rank", "score", "id", "path", box=None, header_style="bold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", str(h.id), h.path)
    out.print(table)


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
    index: IndexOpt = "default",
    home: HomeOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Search by text and/or example images; parts are added or (--minus) subtracted."""
    with _engine(index, home, model=model, weights=weights, device=device) as engine:
        parts = [QueryPart("text", t) for t in ([text] if text is not None else []) + (also_text or [])]
        parts += [QueryPart("image", p.expanduser().resolve()) for p in image or []]
        parts += [engine.resolve_image_ref(ref) for ref in like or []]
        parts += [QueryPart("text", t, -1) for t in minus or []]
        parts += [QueryPart("image", p.expanduser().resolve(), -1) for p in minus_image or []]
        query = Query(tuple(parts))
        hits = engine.search(query, k=k, min_score=min_score)
        _print_hits(query, hits, as_json)


@app.command()
def similar(
    ref: Annotated[str, typer.Argument(help="An indexed image's id or path, or any image file.")],
    k: KOpt = 10,
    min_score: MinScoreOpt = None,
    index: IndexOpt = "default",
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """More like this: images near an indexed image (itself left out) or near an image file."""
    with _engine(index, home, device=device) as engine:
        query = Query.of(engine.resolve_image_ref(ref))
        hits = engine.search(query, k=k, min_score=min_score)
        _print_hits(query, hits, as_json)


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Indexed files to forget (the files are not deleted).")],
    index: IndexOpt = "default",
    home: HomeOpt = None,
) -> None:
    """Forget files from the index without touching them on disk."""
    with _engine(index, home) as engine:
        n = engine.remove(list(paths))
        out.print(f"removed {n} of {len(paths)} files from index {index!r}")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return str(n)


@app.command()
def stats(index: IndexOpt = "default", home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Counts, model and sizes on disk of an index."""
    with _engine(index, home) as engine:
        st = engine.stats()
        if as_json:
            out.print_json(json.dumps(vars(st), default=str))
            return
        out.print(f"index      {st.name} ({st.path})", highlight=False)
        out.print(f"model      {st.embedder_id} (dim {st.dim})", highlight=False)
        c = st.counts
        out.print(
            f"files      {c['files']} in {c['roots']} folder(s); {c['images']} distinct images, "
            f"{c['embedded']} embedded; {st.vectors} vectors; {c['failures']} failed files",
            highlight=False,
        )
        out.print(
            f"on disk    database {_human(st.bytes_on_disk['database'])}, "
            f"vectors {_human(st.bytes_on_disk['vectors'])}",
            highlight=False,
        )
        for path, reason in st.failures:
            out.print(f"  failed: {path}: {reason}", highlight=False, soft_wrap=True)


@app.command()
def doctor(
    index: IndexOpt = "default",
    home: HomeOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check that the database and the vector index agree (and --fix them)."""
    with _engine(index, home) as engine:
        report = engine.doctor(fix=fix)
        if as_json:
            out.print_json(json.dumps({**vars(report), "ok": report.ok}))
        else:
            out.print(f"{report.embedded_rows} embedded images, {report.vectors} vectors")
            for problem in report.problems:
                out.print(f"  problem: {problem}")
            out.print("ok" if report.ok else ("fixed" if report.fixed else "run `retrieval doctor --fix`"))
        if not report.ok and not report.fixed:
            raise typer.Exit(1)


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

    warnings.showwarning = _show_warning
    try:
        run_demo(home=home, index=index, photos=photos, say=lambda line: out.print(line, highlight=False))
    except RetrievalError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
