"""A user's first hour: commands start without the heavy packages, indexes live in one home whatever the
current folder, failed first commands leave nothing behind, tables fit 80 columns, messages say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from retrieval_cli.main import app
from support.labelled_folders import write_digits
from typer.testing import CliRunner

from retrieval.demo import next_commands
from retrieval.embedders.projections import HeadParams
from retrieval.engine import Engine, Filter, list_indexes
from retrieval.ingest.pipeline import IngestProgress
from retrieval.settings import resolve_home

runner = CliRunner()
HEAVY = ("torch", "open_clip", "torchvision", "sklearn", "matplotlib", "ray", "pymilvus", "scipy", "skimage")
#: What each command also does without (BENCHMARKS.md, "CLI start"): `--help` imports no library module;
#: `stats`, `list` and a search read a database at the current schema through stdlib sqlite3, not
#: SQLAlchemy or Alembic; `list` opens no vector store, and `stats` reads only the store's manifest.
#: No command that only reads imports pydantic (typer 0.29 did, for every option: ~0.2 s), and `--help`
#: imports no rich at all (the consoles are made on first use).
LIGHTER = {
    "--help": ("numpy", "sqlalchemy", "PIL", "hnswlib", "rich", "pydantic"),
    "stats": ("sqlalchemy", "alembic", "PIL", "numpy", "hnswlib", "pydantic", "rich.progress"),
    "list": ("sqlalchemy", "alembic", "numpy", "hnswlib", "PIL", "pydantic", "rich.progress"),
    "search --image IMAGE": ("sqlalchemy", "alembic", "pydantic", "rich.progress"),
}

# Runs the CLI in a fresh interpreter, then writes its exit code and which of the packages named in argv[2]
# it imported to the file named in argv[1].
_PROBE = """
import json, sys
from retrieval_cli.main import app
report, heavy, sys.argv = sys.argv[1], json.loads(sys.argv[2]), ["retrieval", *sys.argv[3:]]
try:
    app()
except SystemExit as exc:
    code = exc.code
with open(report, "w") as f:
    json.dump({"code": code, "heavy": [m for m in heavy if m in sys.modules]}, f)
"""


def heavy_imports(tmp_path: Path, *argv: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of `heavy` `retrieval ARGV` imports in a fresh interpreter (it must exit with 0)."""
    report = tmp_path / "imported.json"
    probe = [sys.executable, "-c", _PROBE, str(report), json.dumps(heavy), *argv]
    subprocess.run(probe, check=True, capture_output=True)
    result = json.loads(report.read_text())
    assert result["code"] in (0, None)
    return result["heavy"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def classic_index(make_photos) -> list[Path]:
    paths = make_photos(6)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    return paths


# -- fast start ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["stats"], ["list"], ["search", "--image", "IMAGE"], ["doctor"], ["duplicates"]],
    ids=lambda args: " ".join(args),
)
def test_commands_that_need_no_model_start_without_the_heavy_packages(args, classic_index, tmp_path):
    argv = [str(classic_index[2]) if a == "IMAGE" else a for a in args]
    heavy = HEAVY + LIGHTER.get(" ".join(args), ())
    assert heavy_imports(tmp_path, *argv, heavy=heavy) == []


def test_the_import_probe_sees_a_heavy_package_that_a_command_imports(classic_index, tmp_path):
    """The probe above can fail: `ingest` of a new classic index does import SQLAlchemy."""
    assert heavy_imports(tmp_path, "ingest", str(classic_index[0].parent), heavy=("sqlalchemy",)) == [
        "sqlalchemy"
    ]


def test_stats_list_and_search_read_the_same_without_sqlalchemy_as_with_it(classic_index, tmp_path):
    """The sqlite3 reader (a database at the current schema) and MetadataStore give the same answers."""
    (classic_index[0].parent / "broken.jpg").write_bytes(b"not a jpeg")
    with Engine() as engine:
        engine.ingest(classic_index[0].parent)
    with Engine() as light:
        assert light._meta is None  # read through the reader until something needs more
        fast = (light.stats(failures=None), light.summary(), light.search_image(classic_index[1], k=6))
        assert light._meta is None
        _ = light.meta  # opens MetadataStore: every read now goes through SQLAlchemy
        full = (light.stats(failures=None), light.summary(), light.search_image(classic_index[1], k=6))
    assert fast == full
    assert fast[0].counts["failures"] == 1 and len(fast[2]) == 6


def test_a_filtered_search_opens_the_metadata_store_and_keeps_to_the_filter(classic_index, make_photos):
    """A filter's SQL is MetadataStore's: an index read through the sqlite3 reader opens the store for a
    filtered search (only then), and the results keep to the filter."""
    make_photos(3, classic_index[0].parent / "Holidays", start=10)
    with Engine() as engine:
        engine.ingest(classic_index[0].parent)
    with Engine() as light:
        everything = light.search_image(classic_index[1], k=9, filter=Filter())  # an empty filter: no limit
        assert light._meta is None and len(everything) == 9
        hits = light.search_image(classic_index[1], k=9, filter=Filter(folders=("Holidays",)))
        assert light._meta is not None
    assert sorted(Path(h.path).name for h in hits) == ["photo010.jpg", "photo011.jpg", "photo012.jpg"]


def test_remove_and_stats_on_a_clip_index_do_not_load_the_model(make_photos, tmp_path):
    paths = make_photos(3)
    with (
        pytest.warns(UserWarning, match="RANDOM"),
        Engine("clip", model="clip:tiny-test", pretrained=None) as e,
    ):
        e.ingest(paths[0].parent)
    assert heavy_imports(tmp_path, "stats", "--index", "clip") == []
    assert heavy_imports(tmp_path, "remove", str(paths[0]), "--index", "clip") == []
    with Engine("clip") as engine:
        assert engine.stats().counts["files"] == 2


def test_duplicates_help_states_the_neighbour_default_the_library_uses():
    from retrieval.search.duplicates import DEFAULT_NEIGHBOURS

    result = invoke("duplicates", "--help")
    assert f"[default: {DEFAULT_NEIGHBOURS};" in " ".join(result.output.split())


def test_eval_help_states_the_head_default_it_uses():
    result = invoke("eval", "--help")
    assert f"[default: {HeadParams.steps}]" in " ".join(result.output.split())


# -- the index home --------------------------------------------------------------------------------------


def test_default_home_is_the_user_data_folder_not_the_current_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RETRIEVAL_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    assert resolve_home() == tmp_path / "user" / ".local" / "share" / "retrieval"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert resolve_home() == tmp_path / "data" / "retrieval"
    assert not (tmp_path / "indexes").exists()


def test_an_ingest_of_a_missing_folder_leaves_no_index_folder(home, tmp_path):
    result = invoke("ingest", tmp_path / "no-such-folder", "--model", "classic")
    assert result.exit_code == 2
    assert "is not a folder" in result.stderr
    assert not (home / "default").exists()


def test_an_ingest_with_a_bad_model_leaves_no_index_folder_and_no_blank_line(home, make_photos):
    paths = make_photos(1)
    result = invoke("ingest", paths[0].parent, "--model", "bogus")  # the progress bar is on
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown embedder 'bogus'")
    assert len(result.stderr.splitlines()) == 1
    assert not (home / "default").exists()


def test_offline_weights_leave_no_index_folder_or_lock(home, make_photos, monkeypatch):
    from retrieval.embedders import clip as clip_module

    monkeypatch.setattr(clip_module, "_cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(clip_module, "network_reachable", lambda host: False)
    paths = make_photos(1)
    result = invoke("ingest", paths[0].parent, "--no-progress")
    assert result.exit_code == 3
    assert not (home / "default").exists()


def test_a_failed_ingest_into_an_existing_index_keeps_it(classic_index, home, tmp_path):
    assert invoke("ingest", tmp_path / "gone", "--model", "classic").exit_code == 2
    with Engine() as engine:
        assert engine.stats().counts["files"] == 6


def test_list_shows_every_index_with_its_model_images_and_folders(make_photos, tmp_path, home):
    first = make_photos(3, tmp_path / "first")
    second = make_photos(2, tmp_path / "second", start=10)
    with Engine("holiday", model="classic") as engine:
        engine.ingest(first[0].parent)
    with Engine("work", model="classic") as engine:
        engine.ingest(second[0].parent)
    (home / "holiday-photos").mkdir()  # a folder without a database is not an index
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert "2 indexes" in result.stdout
    assert "holiday  classic:v2, 3 images" in result.stdout and "work  classic:v2, 2 images" in result.stdout
    assert str(first[0].parent) in result.stdout and "last ingest 20" in result.stdout
    payload = json.loads(invoke("list", "--json").stdout)
    assert [(s["name"], s["images"], s["folders"]) for s in payload["indexes"]] == [
        ("holiday", 3, [str(first[0].parent)]),
        ("work", 2, [str(second[0].parent)]),
    ]
    assert all(s["bytes_on_disk"] > 0 and s["last_ingest"] for s in payload["indexes"])
    assert [s.name for s in list_indexes()] == ["holiday", "work"]


def test_stats_names_the_folders_an_index_holds(classic_index):
    result = invoke("stats")
    assert f"folders    {classic_index[0].parent}" in result.stdout
    assert json.loads(invoke("stats", "--json").stdout)["folders"] == [str(classic_index[0].parent)]


# -- output that fits ------------------------------------------------------------------------------------


def test_eval_tables_fit_80_columns_without_cutting_a_number(tmp_path):
    folder = write_digits(tmp_path / "digits", per_class=4)
    args = ["eval", folder, "--model", "classic", "--compare", "--head-steps", "5", "-k", "1,5,10"]
    env = {**os.environ, "COLUMNS": "80"}
    command = [sys.executable, "-m", "retrieval", *map(str, args), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    measures = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if "@" in line}
    assert set(measures) >= {"precision@10", "recall@5", "mAP@1"}
    for values in measures.values():  # four methods, each figure whole: 0.123 or 0.123*
        assert len(values) == 4 and all(len(v.rstrip("*")) == 5 and v[1] == "." for v in values)


# -- messages --------------------------------------------------------------------------------------------


def test_a_jpeg_passed_as_weights_is_called_not_a_checkpoint(make_photos, home):
    paths = make_photos(2)
    result = invoke("ingest", paths[0].parent, "--model", "resnet18", "--weights", paths[1], "--no-progress")
    assert result.exit_code == 2
    assert f"weights file {paths[1]} is not a checkpoint (a JPEG image)" in result.stderr
    assert "weights_only" not in result.stderr and "torch" not in result.stderr
    assert not (home / "default").exists()


def test_remove_names_the_paths_it_did_not_find(classic_index, tmp_path):
    result = invoke("remove", classic_index[0], tmp_path / "never.jpg")
    assert result.exit_code == 0, result.output
    assert "removed 1 of 2 files" in result.stdout
    assert f"not in the index: {tmp_path / 'never.jpg'}" in result.stdout


def test_remove_on_a_missing_index_creates_nothing(home, tmp_path):
    result = invoke("remove", tmp_path / "a.jpg", "--index", "nothing")
    assert result.exit_code == 4
    assert not (home / "nothing").exists()


def test_an_empty_query_names_every_kind_of_query_part(classic_index):
    result = invoke("search")
    assert result.exit_code == 2
    assert "--image" in result.stderr and "--like" in result.stderr


def test_the_ingest_summary_counts_files_of_unsupported_types(make_photos):
    paths = make_photos(2)
    (paths[0].parent / "drawing.svg").write_text("<svg/>")
    (paths[0].parent / "notes.txt").write_text("not a photo")
    result = invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "2 added" in result.stdout and "2 skipped (not a supported image type)" in result.stdout
    assert "svg" not in result.stdout  # counted, not listed one by one
    again = json.loads(invoke("ingest", paths[0].parent, "--model", "classic", "--json").stdout)
    assert again["unsupported"] == 2 and again["skipped"] == []


def test_the_demo_ends_with_commands_that_name_its_home_and_index(tmp_path):
    photo = tmp_path / "photos" / "chelsea.png"
    lines = next_commands(tmp_path / "h", "demo", photo, text=True)
    assert lines[0] == "next, try:"
    tail = f"--home {tmp_path / 'h'} --index demo"
    assert lines[1] == f"  retrieval search 'a cat' {tail}"
    assert f"retrieval search --image {photo} {tail}" in lines[2]
    assert f"retrieval map --similar {photo} --out {tmp_path / 'h' / 'demo-map.html'} {tail}" in lines[3]
    assert f"retrieval serve {tail}" in lines[4]
    assert not any("'a cat'" in line for line in next_commands(tmp_path, "demo", photo, text=False))


def test_the_map_command_says_what_trustworthiness_means(make_photos):
    paths = make_photos(8)
    invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    result = invoke("map", "--similar", "1", "-n", "6", "--out", paths[0].parent / "m.png")
    assert result.exit_code == 0, result.output
    assert "trustworthiness: how often images close on the map are also close for the model" in result.stdout


def test_loading_a_model_is_reported_before_the_first_file(make_photos):
    paths = make_photos(2)
    seen: list[IngestProgress] = []
    with (
        pytest.warns(UserWarning, match="RANDOM"),
        Engine(model="clip:tiny-test", pretrained=None, device="cpu") as engine,
    ):
        engine.ingest(paths[0].parent, progress=seen.append)
    assert seen[:2] == [
        IngestProgress("loading clip:tiny-test", 0, None),
        IngestProgress("loading clip:tiny-test", 1, 1),
    ]
    assert seen[-1].phase == "ingest"
