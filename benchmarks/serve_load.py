"""Load check of `retrieval serve`: text searches from 1 and from 8 concurrent clients, batching off and on.

    .venv/bin/python benchmarks/serve_load.py [--model clip:tiny-test] [--images 300] [--requests 400]
        [--rounds 3] [--clients 1,8] [--modes off,0,3] [--k 20]

It draws --images synthetic photos, indexes them with --model (default the tiny CLIP config shipped for
tests; RANDOM weights either way: the results mean nothing, the work per request is real: tokenise, run the
text tower, search, read metadata), starts one `retrieval serve` process per mode on 127.0.0.1 (each on a free
port, all serving the same index): "off" with $RETRIEVAL_TEXT_BATCH=1 (each query its own forward), a number
for batching with that window in milliseconds ($RETRIEVAL_TEXT_BATCH_WINDOW_MS). It then sends, round after
round, --requests `GET /api/search?q=...&k=...` requests from each --clients count of concurrent HTTP/1.1
clients (keep-alive, one connection each) to each server in turn, so that every cell sees the same load on
the machine, and prints requests/s, latency percentiles and the error count per cell as a Markdown table,
with ratios to "off" at the same client count. It only ever talks to 127.0.0.1, and exits non-zero if any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from retrieval.engine import Engine

HOST = "127.0.0.1"  # loopback only, by design
WORDS = [
    "a dog on the beach",
    "sunset over the sea",
    "red car in the street",
    "snowy mountains",
    "a cat asleep on a sofa",
    "birthday cake with candles",
    "city lights at night",
    "green forest path",
    "two people laughing",
    "boats in a harbour",
    "a plate of pasta",
    "old stone church",
    "children playing football",
    "a bicycle against a wall",
    "rainy window",
    "field of yellow flowers",
    "a bowl of fruit",
    "desert road",
    "fireworks",
    "a person reading a book",
]


def draw(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct synthetic photo per seed: a colour gradient and a few shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    corners = rng.uniform(0, 255, (2, 2, 3))
    fy, fx = np.mgrid[0:h, 0:w] / np.array([h - 1, w - 1])[:, None, None]
    fy, fx = fy[..., None], fx[..., None]
    grad = (
        corners[0, 0] * (1 - fx) * (1 - fy)
        + corners[0, 1] * fx * (1 - fy)
        + corners[1, 0] * (1 - fx) * fy
        + corners[1, 1] * fx * fy
    )
    img = Image.fromarray(grad.astype(np.uint8))
    pen = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=fill)
    return img


def build_index(home: Path, photos: Path, n: int, model: str) -> float:
    """Draw n photos and index them with `model`, random weights; returns the seconds the ingest took."""
    photos.mkdir(parents=True)
    for i in range(n):
        draw(i).save(photos / f"img{i:04d}.jpg", quality=88)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Engine("bench", home=home, model=model, pretrained=None, device="cpu") as engine:
            engine.ingest(photos)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def mode_env(mode: str) -> dict[str, str]:
    """The server's environment for a mode: "off" (no batching) or a window in milliseconds."""
    if mode == "off":
        return {"RETRIEVAL_TEXT_BATCH": "1"}
    return {"RETRIEVAL_TEXT_BATCH": "32", "RETRIEVAL_TEXT_BATCH_WINDOW_MS": str(float(mode))}


def start_server(home: Path, port: int, mode: str) -> tuple[subprocess.Popen[bytes], float]:
    """Run `retrieval serve` as its own process; return it once /api/health answers, and the wait."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **mode_env(mode)}
    cmd = [sys.executable, "-m", "retrieval_cli.main", "serve", "--index", "bench", "--home", str(home)]
    cmd += ["--host", HOST, "--port", str(port), "--device", "cpu"]
    started = time.perf_counter()
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://{HOST}:{port}/api/health", timeout=1).status_code == 200:
                return server, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not answer /api/health within 180 s")


async def load(base: str, requests: int, clients: int, k: int) -> tuple[list[float], int, float]:
    """Send `requests` text searches from `clients` concurrent clients; (latencies in s, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def client() -> None:
        nonlocal errors, issued
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)
        ) as http:
            while issued < requests:
                n = issued
                issued += 1
                params = {"q": f"{WORDS[n % len(WORDS)]} {n // len(WORDS)}", "k": k}
                started = time.perf_counter()
                try:
                    response = await http.get("/api/search", params=params)
                    ok = response.status_code == 200 and len(response.json()["results"]) == k
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def label(mode: str) -> str:
    return "off" if mode == "off" else f"on, {float(mode):g} ms window"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="clip:tiny-test", help="A CLIP model, built with random weights.")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument(
        "--requests", type=int, default=400, help="Measured requests per cell and round (bounded)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over every cell, interleaved.")
    parser.add_argument("--clients", default="1,8", help="Comma-separated counts of concurrent clients.")
    parser.add_argument("--modes", default="off,0,3", help='"off", and/or batching windows in ms.')
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="Requests per cell before the rounds.")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if not 1 <= args.requests <= 100_000 or not all(1 <= c <= 64 for c in clients):
        parser.error("keep --requests within 1..100000 and --clients within 1..64")
    if not 1 <= args.rounds <= 20 or any(m != "off" and not 0 <= float(m) <= 50 for m in modes):
        parser.error("keep --rounds within 1..20 and each mode 'off' or a window of 0..50 ms")

    latencies: dict[tuple[str, int], list[float]] = {(m, c): [] for m in modes for c in clients}
    walls: dict[tuple[str, int], float] = dict.fromkeys(latencies, 0.0)
    errors: dict[tuple[str, int], int] = dict.fromkeys(latencies, 0)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        home = Path(tmp) / "home"
        ingest_s = build_index(home, Path(tmp) / "photos", args.images, args.model)
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            starts = []
            for mode in modes:
                port = free_port()
                server, start_s = start_server(home, port, mode)
                servers[mode] = (server, f"http://{HOST}:{port}")
                starts.append(start_s)
            for mode in modes:
                for c in clients:
                    asyncio.run(load(servers[mode][1], args.warmup, c, args.k))
            for _ in range(args.rounds):
                for c in clients:
                    for mode in modes:
                        got, failed, wall = asyncio.run(load(servers[mode][1], args.requests, c, args.k))
                        latencies[mode, c] += got
                        walls[mode, c] += wall
                        errors[mode, c] += failed
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(30)

    print(
        f"{args.images} images, {args.model} (RANDOM weights), ingest {ingest_s:.1f} s, servers ready in "
        f"{max(starts):.1f} s; Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; {args.rounds} rounds of {args.requests} requests per cell\n"
    )
    print(
        "| batching | clients | requests | errors | requests/s | × off | mean ms | p50 ms | p95 ms "
        "| p99 ms | p50 × off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in clients:
        for mode in modes:
            ms = [v * 1000 for v in latencies[mode, c]]
            rate = len(ms) / walls[mode, c]
            base = "off" if "off" in modes else modes[0]
            base_rate = len(latencies[base, c]) / walls[base, c]
            base_p50 = percentile([v * 1000 for v in latencies[base, c]], 50)
            print(
                f"| {label(mode)} | {c} | {len(ms)} | {errors[mode, c]} | {rate:.1f} "
                f"| {rate / base_rate:.2f} "
                f"| {statistics.fmean(ms):.1f} | {percentile(ms, 50):.1f} | {percentile(ms, 95):.1f} "
                f"| {percentile(ms, 99):.1f} | {percentile(ms, 50) / base_p50:.2f} |"
            )
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
