"""Distributed ingest on Ray (retrieval/ingest/ray.py): on one local Ray runtime for the module, then on a
real cluster (`ray start --head` plus a worker node, token auth: tests/support/ray_cluster.py) driven by
the CLI in
subprocesses.

A Ray ingest must build the index a local ingest builds from the same folder: the same content ids, file
rows and failure records, vectors equal to float tolerance, and it must resume after an interruption like a
local one; the driver reads no photo. The tests that need Ray are skipped only where the `ray` extra is not
installed; the clear errors (no extra, no cluster, ray://) and the local path's independence from Ray are
tested everywhere.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from retrieval_cli.main import app
from support.index_checks import assert_consistent
from support.photos import draw_photo
from support.ray_cluster import RayCluster, running_ray_cluster
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import ClusterError
from retrieval.ingest import ray as distributed
from retrieval.ingest.pipeline import IngestProgress
from retrieval.ingest.ray import CHANGED, EmbedderArgs, EmbedWorker, RayStage

pytestmark = [
    pytest.mark.slow,  # Ray runtimes, actors and fresh interpreters
    pytest.mark.filterwarnings("ignore::retrieval.embedders.RandomWeightsWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),  # Ray Data's own settings, not ours
]
runner = CliRunner()
MODEL = "clip:tiny-test"  # random weights: the vectors mean nothing, they only have to agree


def write_folder(folder: Path, n: int = 14) -> dict[str, str]:
    """Photos of several sizes and formats (one with a capture time), a byte-identical copy, and broken
    files; returns broken file name -> a word its failure reason contains."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = (160 + 24 * (i % 4), 120 + 16 * (i % 3))
        fmt, ext = (("PNG", "png"), ("WEBP", "webp"), ("JPEG", "jpg"))[i % 3]
        draw_photo(i, size).save(folder / f"p{i:02d}.{ext}", fmt)
    exif = Image.Exif()
    exif[0x0132] = "2021:06:01 12:30:00"  # DateTime
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"  # Make, Model
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)
    draw_photo(40).save(folder / "dated.jpg", "JPEG", exif=exif)
    shutil.copy(folder / "p01.webp", folder / "p01-copy.webp")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo\n")
    (folder / "truncated.jpg").write_bytes((folder / "p02.jpg").read_bytes()[:700])
    return {"empty.jpg": "empty", "notes.jpg": "not an image", "truncated.jpg": "truncated"}


def thumbnails(index_dir: Path) -> dict[str, bytes]:
    """The thumbnails an index holds, by path under its thumbs/ folder."""
    folder = index_dir / "thumbs"
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.jpg")}


def snapshot(index_dir: Path) -> dict[str, Any]:
    """Everything an index records about its images, read straight from its database and vectors."""
    db = sqlite3.connect(index_dir / "meta.sqlite")
    try:
        tables = {
            "contents": "SELECT id, hash, width, height, format, captured_at, embedded, camera_make, "
            "camera_model, lens, gps_lat, gps_lon FROM contents",
            "files": "SELECT id, path, content_id, size, mtime_ns, folder FROM files",
            "failures": "SELECT path, reason, size, mtime_ns FROM failures",
        }
        rows = {name: sorted(db.execute(sql).fetchall()) for name, sql in tables.items()}
    finally:
        db.close()
    with Engine(index_dir.name, home=index_dir.parent) as engine:
        ids = sorted(int(i) for i in engine.store.ids())
        rows["vectors"] = dict(zip(ids, engine.store.vectors(ids), strict=True))
    return rows


def assert_same_index(a: dict[str, Any], b: dict[str, Any]) -> None:
    for table in ("contents", "files", "failures"):
        assert a[table] == b[table], table
    assert a["vectors"].keys() == b["vectors"].keys()
    for i, vector in a["vectors"].items():
        assert np.allclose(vector, b["vectors"][i], atol=1e-5), i


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- without a runtime: clear errors, and a local ingest that never imports Ray ------------------------------


def test_without_the_ray_extra_a_ray_ingest_says_what_to_install(make_photos, home, monkeypatch):
    photos = make_photos(2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = runner.invoke(
        app, ["ingest", str(photos[0].parent), "--ray", "--model", "classic", "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert "needs Ray Data, which is not installed" in result.output
    assert "pip install 'retrieval[ray]'" in result.output
    assert not (home / "default" / "meta.sqlite").exists()  # nothing was written


def test_an_unreachable_ray_address_is_one_line_with_exit_8(make_photos, home, monkeypatch):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # this module's runtime starts with the first test that asks for it
    photos = make_photos(2)
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RETRIEVAL_RAY_ADDRESS", address)  # the setting alone asks for Ray
    result = runner.invoke(app, ["ingest", str(photos[0].parent), "--model", "classic", "--no-progress"])
    assert result.exit_code == 8, result.output
    assert result.output.count("\n") == 1
    assert f"cannot reach a Ray cluster at {address}" in result.output
    assert not (home / "default" / "meta.sqlite").exists()
    malformed = runner.invoke(
        app, ["ingest", str(photos[0].parent), "--ray-address", "head-node", "--model", "classic"]
    )
    assert malformed.exit_code == 2, malformed.output
    assert "Ray address 'head-node' is not HOST:PORT" in malformed.output
    client = runner.invoke(
        app,
        [
            "ingest",
            str(photos[0].parent),
            "--ray-address",
            "ray://head:10001",
            "--model",
            "classic",
            "--no-progress",
        ],
    )
    assert client.exit_code == 2, client.output
    assert client.output.count("\n") == 1
    assert "Ray Client (ray://) cannot run the ingest" in client.output
    assert "HOST:6379" in client.output and "ray job submit" in client.output
    # --no-ray overrides the setting: the same command ingests here.
    local = runner.invoke(
        app, ["ingest", str(photos[0].parent), "--no-ray", "--model", "classic", "--no-progress"]
    )
    assert local.exit_code == 0, local.output
    assert "2 added" in local.output


def test_ingest_help_says_how_to_ingest_on_ray():
    result = runner.invoke(app, ["ingest", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # as one line, however the help was wrapped
    assert "--ray / --no-ray Decode and embed on Ray (pip install 'retrieval[ray]')" in text
    assert "--ray-address" in text and "$RETRIEVAL_RAY_ADDRESS" in text
    assert "HOST:6379 (its head; not ray://)" in text  # Ray Data does not run through Ray Client


def test_a_local_ingest_never_imports_ray(make_photos, tmp_path):
    photos = make_photos(2)
    script = (
        "import sys\n"
        "from retrieval_cli.main import app\n"
        "try:\n"
        f"    app(['ingest', {str(photos[0].parent)!r}, '--model', 'classic', '--no-progress'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('ray imported' if 'ray' in sys.modules else 'no ray')\n"
    )
    env = {**os.environ, "RETRIEVAL_HOME": str(tmp_path / "sub-home")}
    env.pop("RETRIEVAL_RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("no ray"), done.stdout


def test_results_arriving_in_any_order_are_recorded_in_the_listing_order(tmp_path, home, monkeypatch):
    """The driver's reassembly alone, Ray replaced by EmbedWorker called here, its batches returned last
    first: the index must still be the local ingest's."""
    folder = tmp_path / "photos"
    write_folder(folder)

    @contextmanager
    def no_cluster(_address: str) -> Iterator[Any]:
        yield SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])

    def last_first(stage: RayStage, rows: list[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        worker = EmbedWorker(stage.args, "cpu", stage.batch_size, 1, stage._embedded, stage.thumbnail_sides)
        columns = [
            {k: np.array([row[k] for row in rows[i : i + 3]]) for k in rows[0]}
            for i in range(0, len(rows), 3)
        ]
        yield from reversed([worker(batch) for batch in columns])

    monkeypatch.setattr(distributed, "ray_runtime", no_cluster)
    monkeypatch.setattr(RayStage, "_results", last_first)
    with Engine("local", model="classic") as engine:
        local = engine.ingest(folder)
    seen: list[IngestProgress] = []
    with Engine("ray", model="classic") as engine:
        reordered = engine.ingest(folder, ray_address="local", progress=seen.append)
    assert (reordered.embedded, reordered.linked, reordered.failed) == (local.embedded, 1, local.failed)
    assert_same_index(snapshot(home / "local"), snapshot(home / "ray"))
    assert thumbnails(home / "ray") == thumbnails(home / "local") != {}  # made by the workers, the same
    # Files count as decoded as their batch comes back from the cluster; both counts grow to the total.
    ingest = [p for p in seen if p.phase == "ingest"]
    decoded = [p.decoded for p in ingest]
    steps = np.diff([0, *sorted(set(decoded))])
    assert decoded == sorted(decoded) and steps.max() == 3  # by the batch of 3, not file by file
    assert all(p.embedded <= p.done <= p.decoded for p in ingest)
    assert (ingest[-1].decoded, ingest[-1].embedded) == (ingest[-1].total, ingest[-1].total)


def _plan(resources: list[dict[str, float]], workers: int | None = None) -> tuple[int, str, float, float]:
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}  # a lost node offers nothing
    ray = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": r} for r in resources] + [dead])
    plan = RayStage(ray, None, None, workers=workers).plan  # type: ignore[arg-type]
    return plan.workers, plan.device, plan.num_cpus, plan.num_gpus


def test_actors_are_planned_from_each_nodes_resources_so_that_every_one_fits_on_a_node():
    two_by_two = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert _plan(two_by_two, workers=1) == (1, "cpu", 2.0, 0.0)  # not 4 CPUs, which no node has
    assert _plan(two_by_two) == (2, "cpu", 2.0, 0.0)  # one per node when a node has under 4 CPUs
    assert _plan(two_by_two, workers=3) == (3, "cpu", 1.0, 0.0)
    assert _plan([{"CPU": 8.0}, {"CPU": 2.0}], workers=2) == (2, "cpu", 4.0, 0.0)
    assert _plan([{"CPU": 16.0}, {"CPU": 8.0}]) == (6, "cpu", 4.0, 0.0)
    gpus = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 32.0}]
    assert _plan(gpus) == (3, "cuda", 4.0, 1.0)  # one per GPU, with the CPUs of the GPU nodes
    assert _plan(gpus, workers=6) == (6, "cuda", 2.0, 0.5)


# -- on a local Ray runtime -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime() -> Any:
    """One local runtime for the module: two CPUs, so two actors of one CPU each."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


def test_a_ray_ingest_records_the_ids_vectors_and_failures_of_a_local_ingest(ray_runtime, tmp_path, home):
    folder = tmp_path / "photos"
    broken = write_folder(folder)
    common = ["--model", MODEL, "--pretrained", "none", "--device", "cpu", "--batch-size", "4", "--json"]
    local = runner.invoke(app, ["ingest", str(folder), "--index", "local", *common])
    ray = runner.invoke(app, ["ingest", str(folder), "--index", "ray", "--ray", "--workers", "2", *common])
    assert local.exit_code == ray.exit_code == 1, ray.output  # some files failed
    local_report, ray_report = json.loads(local.stdout), json.loads(ray.stdout)
    del local_report["seconds"], ray_report["seconds"]
    assert ray_report == local_report
    counts = ("added", "updated", "removed", "unchanged", "embedded", "linked")
    assert [ray_report[c] for c in counts] == [16, 0, 0, 0, 15, 1]
    assert thumbnails(home / "ray") == thumbnails(home / "local") != {}  # through Ray Data's batches
    failed = {Path(path).name: reason for path, reason in ray_report["failed"]}
    assert failed.keys() == broken.keys()
    assert all(word in failed[name] for name, word in broken.items()), failed

    ray_index = snapshot(home / "ray")
    assert_same_index(snapshot(home / "local"), ray_index)
    assert any(row[5] is not None for row in ray_index["contents"])  # the capture time came back too
    assert any(row[7:9] == ("Canon", "Canon EOS R5") and row[10] is not None for row in ray_index["contents"])
    assert_consistent(home / "ray", files=16)


def test_an_interrupted_ray_ingest_resumes_like_a_local_one(ray_runtime, make_photos, home):
    photos = make_photos(24)
    folder = photos[0].parent

    def stop_after_ten(p: IngestProgress) -> None:
        if p.phase == "ingest" and p.done == 10:
            raise KeyboardInterrupt  # what the engine does on Ctrl-C, between two files

    with Engine("ray", model="classic") as engine, pytest.raises(KeyboardInterrupt):
        engine.ingest(folder, ray_address="local", workers=1, progress=stop_after_ten)
    assert_consistent(home / "ray", files=10)  # every file recorded before the stop is saved

    with Engine("ray") as engine:
        rest = engine.ingest(folder, ray_address="local", workers=1)
    assert (rest.embedded, rest.unchanged, rest.failed) == (14, 10, [])
    with Engine("local", model="classic") as engine:
        engine.ingest(folder)
    assert_same_index(snapshot(home / "local"), snapshot(home / "ray"))


def test_a_file_changed_after_listing_is_a_failure_that_the_next_ingest_retries(
    ray_runtime, make_photos, home
):
    photos = make_photos(6)
    victim = photos[3]

    def change_once_hashed(p: IngestProgress) -> None:
        if p.phase == "ingest" and p.done == 0:  # listed here, not yet read by a worker
            draw_photo(99, (200, 150)).save(victim, "JPEG", quality=80)
            os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))

    with Engine("ray", model="classic") as engine:
        first = engine.ingest(victim.parent, ray_address="local", workers=1, progress=change_once_hashed)
        assert first.failed == [(str(victim), CHANGED)]
        assert first.embedded == 5
        second = engine.ingest(victim.parent)  # any next ingest, local or on Ray
        assert (second.embedded, second.unchanged, second.failed) == (1, 5, [])
        assert engine.search_image(victim, k=1)[0].path == str(victim)


def test_a_worker_that_cannot_start_is_one_line_naming_why(ray_runtime, make_photos):
    photos = make_photos(1)
    with Engine("ray", model="classic") as engine:
        args = EmbedderArgs("classic", None, None, "classic:v0")  # not the model a worker builds
        stage = RayStage(ray_runtime, engine.embedder, args, workers=1)
        with pytest.raises(ClusterError) as raised:
            row = {"seq": 0, "path": str(photos[0]), "size": 1, "mtime_ns": 1}
            list(stage._results([row]))
    message = str(raised.value)
    assert message.startswith(
        "a Ray worker could not start: IndexMismatchError: a Ray worker built classic:v2"
    )
    assert "\n" not in message and "\x1b" not in message


def test_a_ray_ingest_driver_reads_no_photo_and_links_moved_and_copied_files(
    ray_runtime, make_photos, home, monkeypatch
):
    photos = make_photos(6)
    folder = photos[0].parent
    opened: list[str] = []
    real_open = io.open
    watching = True

    def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if watching and str(folder) in str(file):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", watched_open)  # what Path.open calls
    monkeypatch.setattr("builtins.open", watched_open)
    with Engine("ray", model="classic") as engine:
        first = engine.ingest(folder, ray_address="local", workers=1)
        assert (first.embedded, first.failed) == (6, [])
        watching = False
        photos[0].rename(folder / "moved.jpg")
        shutil.copy(photos[1], folder / "copy.jpg")
        watching = True
        second = engine.ingest(folder, ray_address="local", workers=1)
    assert opened == []  # the workers read the photos; this process only listed them
    assert (second.added, second.removed, second.embedded, second.linked) == (2, 1, 0, 2)
    rows = snapshot(home / "ray")
    content_of = {Path(path).name: content for _, path, content, *_ in rows["files"]}
    assert content_of["moved.jpg"] == 1 and content_of["copy.jpg"] == content_of["photo001.jpg"]
    assert_consistent(home / "ray", files=7)


# -- on a real cluster: `ray start --head` and a worker node, token auth, the CLI as a subprocess ----------


RETRIEVAL = str(Path(sys.executable).with_name("retrieval"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """A head of 2 CPUs and a worker node of 2 CPUs: an actor of more than 2 CPUs fits on neither."""
    pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        with running_ray_cluster(temp, num_cpus=2, worker_nodes=1, worker_cpus=2) as started:
            yield started
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def cluster_ingest(
    cluster: RayCluster, home: Path, folder: Path, *args: str, **env: str
) -> subprocess.Popen[str]:
    """`retrieval ingest` in a fresh process joined to `cluster` as a driver (a head lost mid-run makes
    Ray's driver exit the process, which must not be pytest's)."""
    environ = cluster.driver_environ() | {"RETRIEVAL_HOME": str(home)} | env
    command = [RETRIEVAL, "ingest", str(folder), "--ray-address", cluster.address, "--model", "classic"]
    return subprocess.Popen(
        [*command, "--no-progress", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout_s: float = 150) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the ingest did not finish in {timeout_s} s: {err[-2000:]}")
    return proc.returncode, out, err


def wait_for_workers(cluster: RayCluster, proc: subprocess.Popen[str], timeout_s: float = 90) -> list[int]:
    """The pids of the ingest's Ray Data actors, once there are some (while the ingest runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        pids = cluster.descendants("MapWorker")
        if pids:
            return pids
        time.sleep(0.2)
    pytest.fail(f"no Ray worker appeared (ingest exit {proc.poll()})")


def test_an_ingest_on_a_ray_start_cluster_is_a_local_ingest_and_a_driver_without_token_is_told_what_to_set(
    cluster, tmp_path, home, monkeypatch
):
    folder = tmp_path / "photos"
    write_folder(folder)
    ray_home = tmp_path / "ray-home"
    # `--workers 1`: one actor of 2 CPUs (a node's), not of the cluster's 4, which would never be scheduled.
    ingest = cluster_ingest(cluster, ray_home, folder, "--workers", "1", "--json")
    no_token = {k: v for k, v in cluster.driver_environ().items() if not k.startswith("RAY_AUTH")}
    stranger = subprocess.Popen(
        [
            RETRIEVAL,
            "ingest",
            str(folder),
            "--ray-address",
            cluster.address,
            "--model",
            "classic",
            "--no-progress",
        ],
        env=no_token | {"RETRIEVAL_HOME": str(tmp_path / "stranger"), "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    local = runner.invoke(app, ["ingest", str(folder), "--model", "classic", "--json"])
    code, out, err = finished(ingest)
    assert code == local.exit_code == 1, err  # some files failed, in both
    ray_report, local_report = json.loads(out), json.loads(local.stdout)
    del ray_report["seconds"], local_report["seconds"]
    assert ray_report == local_report
    assert err.count("\n") <= 1, err  # Ray's own log lines stay off the terminal (only the summary line)
    assert_same_index(snapshot(home / "default"), snapshot(ray_home / "default"))

    code, out, err = finished(stranger)
    assert code == 8, err
    assert err.count("\n") == 1, err
    assert (
        "needs a token (Ray turns token auth on by default): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
        in err
        and "RAY_AUTH_TOKEN_PATH" in err
    )


def test_a_ray_worker_killed_mid_ingest_is_retried_or_stops_in_one_line_and_a_rerun_finishes(
    cluster, make_photos, tmp_path, home
):
    photos = make_photos(40)
    folder = photos[0].parent
    ray_home = tmp_path / "ray-home"
    ingest = cluster_ingest(cluster, ray_home, folder, "--workers", "2", "--batch-size", "2")
    victim = wait_for_workers(cluster, ingest)[0]
    os.kill(victim, signal.SIGKILL)
    code, _, err = finished(ingest)
    assert code in (0, 8), err
    if code == 8:
        assert err.count("\n") == 1 and "what was recorded is saved" in err, err
    assert_consistent(ray_home / "default")
    rerun = cluster_ingest(cluster, ray_home, folder, "--workers", "2")
    code, _, err = finished(rerun)
    assert code == 0, err
    runner.invoke(app, ["ingest", str(folder), "--model", "classic"])
    assert_same_index(snapshot(home / "default"), snapshot(ray_home / "default"))


def test_losing_the_head_mid_ingest_is_one_line_with_exit_8_after_saving(cluster, make_photos, tmp_path):
    """Last of the module: it kills the cluster."""
    photos = make_photos(60)
    ray_home = tmp_path / "ray-home"
    ingest = cluster_ingest(cluster, ray_home, photos[0].parent, "--workers", "1", "--batch-size", "2")
    wait_for_workers(cluster, ingest)
    started = time.monotonic()
    os.killpg(cluster.procs[0].pid, signal.SIGKILL)  # the head's `ray start` and its GCS and raylet
    code, _, err = finished(ingest, timeout_s=90)
    assert code == 8, err
    assert err.count("\n") == 1, err
    assert "lost the Ray cluster's head" in err and "what was recorded is saved" in err
    assert time.monotonic() - started < 45  # not Ray's own minute, after which it kills the driver
    # A first ingest that lost its cluster before it recorded a file leaves no index behind (as any first
    # ingest that fails early); one that recorded some leaves them consistent.
    if (ray_home / "default" / "meta.sqlite").exists():
        assert_consistent(ray_home / "default")
    else:
        assert not (ray_home / "default").exists()
