"""Load check of `retrieval serve`: text searches from concurrent clients over loopback.

    .venv/bin/python benchmarks/serve_load.py [--images 300] [--requests 2000] [--clients 8] [--k 20]

It draws --images synthetic photos, indexes them with the tiny CLIP config shipped for tests (RANDOM weights:
the results mean nothing, the work per request is real: tokenise, run the text tower, search, read metadata),
starts `retrieval serve` as its own process on 127.0.0.1 and a free port, sends a bounded number of
`GET /api/search?q=...&k=...` requests from --clients concurrent HTTP/1.1 clients (keep-alive, one connection
each), and prints requests/s, latency percentiles and the error count as a Markdown table. It only ever
talks to 127.0.0.1, and exits non-zero if any request failed.
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


def build_index(home: Path, photos: Path, n: int) -> float:
    """Draw n photos and index them with random tiny CLIP; returns the seconds the ingest took."""
    photos.mkdir(parents=True)
    for i in range(n):
        draw(i).save(photos / f"img{i:04d}.jpg", quality=88)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Engine("bench", home=home, model="clip:tiny-test", pretrained=None, device="cpu") as engine:
            engine.ingest(photos)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    """Run `retrieval serve` as its own process; return it once /api/health answers, and the wait."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument(
        "--requests", type=int, default=2000, help="Measured requests (bounded), after warm-up."
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 64:
        parser.error("keep --requests within 1..100000 and --clients within 1..64")

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        home = Path(tmp) / "home"
        ingest_s = build_index(home, Path(tmp) / "photos", args.images)
        port = free_port()
        server, start_s = start_server(home, port)
        try:
            base = f"http://{HOST}:{port}"
            asyncio.run(load(base, args.warmup, args.clients, args.k))
            latencies, errors, wall = asyncio.run(load(base, args.requests, args.clients, args.k))
        finally:
            server.terminate()
            server.wait(30)

    ms = [v * 1000 for v in latencies]
    print(
        f"{args.images} images (random tiny CLIP, 64 dims), ingest {ingest_s:.1f} s, "
        f"server ready in {start_s:.1f} s; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| clients | requests | errors | requests/s | mean ms | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.clients} | {len(ms)} | {errors} | {len(ms) / wall:.0f} | {statistics.fmean(ms):.1f} "
        f"| {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | {percentile(ms, 99):.1f} | {max(ms):.1f} |"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
