"""The command line through typer's CliRunner, plus a few runs of the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from retrieval_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_ingest_then_search_by_image_as_json(make_photos):
    paths = make_photos(5)
    result = invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "5 added" in result.output
    result = invoke("search", "--image", paths[2], "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["results"][0]["path"] == str(paths[2])
    assert set(payload["results"][0]) == {"id", "path", "score", "width", "height"}
    assert payload["results"][0]["width"] == 192 and len(payload["results"]) == 3


def test_table_output_and_similar_by_id(make_photos):
    paths = make_photos(4)
    invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress", "--index", "t")
    result = invoke("similar", "1", "--index", "t", "-k", "2")
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "score" in result.output
    assert result.output.count(str(paths[0].parent)) == 2


def test_text_search_with_tiny_clip(make_photos):
    paths = make_photos(3)
    result = invoke(
        "ingest", paths[0].parent, "--model", "clip:tiny-test", "--pretrained", "none", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "random" in result.output.lower()  # the loud warning reaches the user
    result = invoke("search", "a cat", "--minus", "a dog", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["query"] == "+text:a cat -text:a dog" and len(payload["results"]) == 3


def test_text_search_on_classic_index_is_one_line_and_exit_2(make_photos):
    paths = make_photos(2)
    invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    result = invoke("search", "a cat")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "text" in result.output


def test_missing_index_exit_code_and_message():
    result = invoke("search", "x", "--index", "nope")
    assert result.exit_code == 4
    assert "no index named 'nope'" in result.output and "Traceback" not in result.output


def test_offline_clip_weights_error_is_one_line_naming_weights(make_photos, monkeypatch):
    from retrieval.embedders import clip as clip_module

    # Offline for certain, even on a machine with network: no cache and no route to the hub.
    monkeypatch.setattr(clip_module, "_cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(clip_module, "network_reachable", lambda host: False)
    paths = make_photos(1)
    result = invoke("ingest", paths[0].parent, "--no-progress")
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--weights" in lines[0]


def test_model_mismatch_exit_code(make_photos):
    paths = make_photos(1)
    invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    result = invoke("ingest", paths[0].parent, "--model", "resnet18", "--pretrained", "none", "--no-progress")
    assert result.exit_code == 4 and "classic" in result.output


def test_failed_files_give_a_nonzero_exit_and_are_listed(make_photos):
    paths = make_photos(2)
    (paths[0].parent / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    result = invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    assert result.exit_code == 1
    assert "1 failed" in result.output and "broken.jpg" in result.output


def test_stats_and_doctor(make_photos):
    paths = make_photos(3)
    invoke("ingest", paths[0].parent, "--model", "classic", "--no-progress")
    result = invoke("stats", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["counts"]["embedded"] == 3 and stats["vectors"] == 3 and stats["model"] == "classic"
    result = invoke("doctor")
    assert result.exit_code == 0 and "ok" in result.output


def test_stats_shows_the_first_20_failures_and_lists_every_one_on_request(make_photos):
    folder = make_photos(2)[0].parent
    for i in range(25):
        (folder / f"broken{i:02d}.jpg").write_bytes(b"not a photo")
    assert invoke("ingest", folder, "--model", "classic", "--no-progress").exit_code == 1
    result = invoke("stats")
    assert result.exit_code == 0, result.output
    assert "25 failed files" in result.output and result.output.count("  failed: ") == 20
    assert "... and 5 more (`retrieval stats --failures` lists all)" in result.output
    for flag in ("--failures", "--all"):
        listed = invoke("stats", flag)
        assert listed.exit_code == 0 and listed.output.count("  failed: ") == 25, listed.output
        assert "more" not in listed.output
    assert len(json.loads(invoke("stats", "--json").stdout)["failures"]) == 25


def _installed_command() -> str | None:
    exe = Path(sys.executable).parent / "retrieval"
    return str(exe) if exe.exists() else shutil.which("retrieval")


@pytest.mark.slow
def test_installed_command_runs_from_another_directory(make_photos, tmp_path, home):
    exe = _installed_command()
    if exe is None:
        pytest.skip("the retrieval command is not installed in this environment")
    paths = make_photos(3)
    env = {**os.environ, "RETRIEVAL_HOME": str(home)}
    done = subprocess.run(
        [exe, "ingest", str(paths[0].parent), "--model", "classic", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [exe, "similar", str(paths[1]), "--json", "-k", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["path"] != str(paths[1])
    done = subprocess.run(
        [exe, "search", "cat", "--index", "absent"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4 and done.stderr.strip().startswith("error:")


@pytest.mark.slow
def test_the_wheel_ships_the_cli_migrations_and_web_page(tmp_path):
    """`pip install .` (not only editable) must carry everything the command needs at run time."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1:]}")
    names = zipfile.ZipFile(next(tmp_path.glob("retrieval-*.whl"))).namelist()
    assert "retrieval_cli/main.py" in names
    assert (
        "retrieval/metadata/migrations/env.py" in names
        and "retrieval/metadata/migrations/versions/0002_failures_and_capture_time.py" in names
    )
    assert "retrieval/serve/web/index.html" in names and "retrieval/embedders/tiny-clip.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "retrieval = retrieval_cli.main:run"
        in zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(entry).decode()
    )


def test_eval_with_an_unknown_model_is_one_line_and_exit_2(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "labelled" / name).mkdir(parents=True)
    result = runner.invoke(app, ["eval", str(tmp_path / "labelled"), "--model", "bogus"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bogus" in lines[0]
    assert "Traceback" not in result.output and "MarkupError" not in result.output


# ---- untrusted file names reach the terminal as visible text ---------------------------------------

HOSTILE_NAMES = [
    "a[/]b.jpg",  # a folder "a[" holding "]b.jpg": Rich took "[/]" for a closing tag (MarkupError)
    "[red]x.jpg",
    "[link=https:example.com]y.jpg",
    "\x1b[2Jclear.jpg",
    "\x1b]0;pwned\x07title.jpg",
    "evil\nfailed: forged.jpg",
]


def hostile_photos(folder: Path) -> list[Path]:
    from support.photos import draw_photo

    paths = []
    for i, name in enumerate(HOSTILE_NAMES):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_photo(i).save(path, "JPEG")
        paths.append(path)
    return paths


def assert_shown_safely(output: str, paths: list[Path]) -> None:
    """Every name visible as written, escapes as `\\x1b`/`\\n`, nothing raw for the terminal to act on."""
    assert "\x1b" not in output and "\x07" not in output and "Traceback" not in output
    for path in paths:
        shown = str(path).replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\n", "\\n")
        assert shown in output, (shown, output)
    assert not any(line.startswith("failed: forged") for line in output.splitlines())


def test_file_names_with_markup_and_escape_sequences_are_shown_as_written(tmp_path, monkeypatch):
    from retrieval_cli import main

    monkeypatch.setattr(main.out.real, "width", 2000)  # the duplicates table folds long paths at 80 columns
    paths = hostile_photos(tmp_path / "photos")
    result = invoke("ingest", tmp_path / "photos", "--model", "classic", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "6 added" in result.output and "\x1b" not in result.output
    for args in (
        ["search", "--image", paths[1], "-k", "6"],
        ["similar", paths[2], "-k", "5"],
        ["duplicates", "--threshold", "-1"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert_shown_safely(result.output, paths if args[0] != "similar" else paths[:2] + paths[3:])
    exact = json.loads(invoke("search", "--image", paths[1], "-k", "6", "--json").stdout)
    assert sorted(r["path"] for r in exact["results"]) == sorted(map(str, paths))
    groups = json.loads(invoke("duplicates", "--threshold", "-1", "--json").stdout)["groups"]
    assert sorted(p for g in groups for m in g["members"] for p in m["paths"]) == sorted(map(str, paths))


def test_failed_files_with_hostile_names_are_listed_one_line_each_by_ingest_and_stats(tmp_path):
    folder = tmp_path / "photos"
    broken = [folder / name for name in HOSTILE_NAMES]
    for path in broken:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a photo")
    result = invoke("ingest", folder, "--model", "classic", "--no-progress")
    assert result.exit_code == 1, result.output
    assert_shown_safely(result.output, broken)
    assert sum(line.startswith("  failed: ") for line in result.output.splitlines()) == len(broken)
    result = invoke("stats")  # the failures are recorded: stats must not crash on them either
    assert result.exit_code == 0, result.output
    assert_shown_safely(result.output, broken)
    recorded = json.loads(invoke("stats", "--json").stdout)["failures"]
    assert sorted(path for path, _ in recorded) == sorted(map(str, broken))


def test_ingest_without_thumbnails_makes_none_and_with_them_makes_both_sides(make_photos, home):
    paths = make_photos(3, fmt="PNG")
    assert invoke("ingest", paths[0].parent, "--model", "classic", "--no-thumbnails").exit_code == 0
    assert not (home / "default" / "thumbs").exists()
    assert invoke("ingest", paths[0].parent, "--model", "classic", "--index", "t").exit_code == 0
    assert len(list((home / "t" / "thumbs").glob("*.jpg"))) == 3
    assert len(list((home / "t" / "thumbs" / "256").glob("*.jpg"))) == 3


def test_ingest_bar_shows_files_decoded_and_embedded(make_photos):
    paths = make_photos(4)
    result = invoke("ingest", paths[0].parent, "--model", "classic")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stderr.splitlines()]
    assert [words[0] for words in lines] == ["decoded", "embedded"]
    assert all("4/4" in words for words in lines)


def test_the_rate_is_a_windowed_average_that_falls_while_nothing_moves_and_the_eta_then_goes():
    from types import SimpleNamespace

    from retrieval_cli.progress import RATE_WINDOW_S, STALL_S, _EtaColumn, _Window

    window = _Window(0.0)
    for second in range(1, 61):
        window.add(10 * second, float(second), moved=True)  # 10 files a second for a minute
    assert window.rate(60.0) == pytest.approx(10.0)
    window.add(10_000, 60.5, moved=True)  # a burst: diluted over the window, not 19,000 files a second
    assert window.rate(60.5) < 10_000 / RATE_WINDOW_S + 11
    still = window.rate(60.5 + STALL_S)
    assert still is not None and still < window.rate(60.5)  # falls while nothing comes

    now = [61.0]
    windows = {1: window}
    eta = _EtaColumn(windows, clock=lambda: now[0])
    task = SimpleNamespace(id=1, total=20_000, completed=10_000, finished=False)
    task.fields = {"eta": True, "still": window}
    assert str(eta.render(task)).startswith("eta ")
    now[0] = 60.5 + STALL_S + 0.1
    assert str(eta.render(task)) == ""  # nothing moved for STALL_S: no time left is claimed
