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
