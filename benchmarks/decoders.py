"""Would pyvips's shrink-on-load beat Pillow on the formats Pillow cannot shrink while decoding?

    python benchmarks/decoders.py [--cache DIR] [--side 896]

pyvips is not a dependency of retrieval: run this with any Python that has pillow, numpy and
`pyvips[binary]` (a scratch venv: `python3 -m venv /tmp/vips && /tmp/vips/bin/pip install "pyvips[binary]"
pillow numpy`). For every file of the `lossless` set (benchmarks/photos.py: the PNG and WebP backgrounds)
it times, as this process's CPU time (libvips decodes in threads of its own), the best of 3:

- Pillow: a full decode (`Image.load`), which is what `decode_image` pays for these formats;
- pyvips: the file loaded already shrunk so that its shorter side is about `side` pixels (WebP: libwebp's
  scaled decoding through `webpload_buffer(scale=...)`; PNG has no such option and is loaded whole).

`side` defaults to 896, the 4x margin that `decode_image` keeps for a 224-pixel model input.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section
from photos import DEFAULT_CACHE, lossless_set


def cpu_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--side", type=int, default=896)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    try:
        import pyvips
    except ImportError:
        raise SystemExit("pyvips is not installed here; see this script's docstring") from None
    pyvips.cache_set_max(0)

    folder = lossless_set(args.cache)
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".png", ".webp")):
        data = path.read_bytes()

        def pillow(data: bytes = data) -> None:
            with Image.open(io.BytesIO(data)) as im:
                im.load()

        def vips(data: bytes = data, webp: bool = path.suffix == ".webp") -> None:
            head = pyvips.Image.new_from_buffer(data, "")
            shrink = min(1.0, args.side / min(head.width, head.height))
            if webp:
                pyvips.Image.webpload_buffer(data, scale=shrink, access="sequential").numpy()
            else:
                pyvips.Image.new_from_buffer(data, "", access="sequential").numpy()

        by_kind.setdefault(path.suffix[1:].upper(), []).append((cpu_ms(pillow), cpu_ms(vips)))
    libvips = ".".join(str(pyvips.version(i)) for i in range(3))
    lines = [
        f"Command: `python benchmarks/decoders.py {' '.join(sys.argv[1:])}` ({datetime.date.today()}), "
        f"pyvips {pyvips.__version__}, libvips {libvips}, in a scratch venv (pyvips is not a dependency); "
        f"the `lossless` set; target shorter side {args.side}; CPU time of this process, best of 3; "
        f"load {os.getloadavg()[0]:.2f}.",
        "",
        "| format | files | Pillow full decode, CPU ms | pyvips shrink-on-load, CPU ms | ratio |",
        "|---|---|---|---|---|",
    ]
    for kind, pairs in sorted(by_kind.items()):
        pil = statistics.mean(p for p, _ in pairs)
        vip = statistics.mean(v for _, v in pairs)
        lines.append(f"| {kind} | {len(pairs)} | {pil:.0f} | {vip:.0f} | {vip / pil:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(f"{HEADING}\n\n{table}\n\n{DECISION}")


HEADING = "## Decoders: Pillow vs pyvips shrink-on-load (PNG, WebP)"
DECISION = """Not adopted. libwebp's scaled load still decodes every macroblock, so it saves about a
quarter of the CPU on WebP (and libspng about a fifth on PNG), not the order of magnitude that JPEG's
DCT scaling gives. In the photo-library mix (i) those formats are a tenth of the files: about 5 ms of
the ~60 ms average decode cost, a few percent of ingest throughput. Against that, a second decoder would
need the same hardening and tests as the Pillow path (decompression-bomb limits, truncated and hostile
files, EXIF orientation, ICC and odd modes) and a ~40 MB binary dependency. Worth revisiting for
WebP/HEIC-heavy libraries, where set (ii) shows decode is the bound.
"""


if __name__ == "__main__":
    main()
