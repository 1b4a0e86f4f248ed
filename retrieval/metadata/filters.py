"""`Filter`: which part of a library a query searches (folders, dates, camera, format, size, place).

A filter is data: `MetadataStore.allowed_ids` turns it into the ids of the images it allows (SQL over
indexed columns, in store.py), and the search asks the vector store for results among those ids only.
`parse_filter` reads one from what a user typed, for the CLI and the HTTP server alike, so both accept
and refuse the same values with the same one-line messages.

Every criterion narrows (they combine with AND); several folders widen each other (OR). A content held by
several files (copies) is allowed when any one of its files matches; the hit then reports the first
matching file (in path order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time
from typing import Literal

import numpy as np

from retrieval.errors import UsageError

#: What `--format` accepts (lower case) -> the format name the index records (files.decoding.DECODERS).
FORMAT_NAMES: dict[str, str] = {
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "tif": "TIFF",
    "heic": "HEIC/HEIF",
    "heif": "HEIC/HEIF",
    "avif": "AVIF",
}
EARTH_RADIUS_KM = 6371.0088
MAX_FOLDERS = 100


@dataclass(frozen=True)
class Filter:
    """The part of an index a query searches; None / empty means "no limit" for each field.

    Attributes:
        folders: folders relative to the indexed root ("Holidays/2023"), or absolute paths; a file
            matches one when it lies in it or below it. Several: any of them.
        after: from the start of this day (or this moment), inclusive.
        before: up to the start of this day (or this moment), exclusive: `after=2023-01-01,
            before=2024-01-01` is 2023. Both compare the EXIF capture time, else the file's modification
            time (local time).
        camera: a case-insensitive part of the camera's make or model ("canon", "iphone 12").
        formats: recorded format names ("JPEG", "PNG", see FORMAT_NAMES' values).
        min_width, min_height: pixels, of the upright picture.
        near, within_km: (latitude, longitude) in degrees and a great-circle distance: photos whose EXIF
            position lies within it (photos without a position are left out).
    """

    folders: tuple[str, ...] = ()
    after: date | None = None
    before: date | None = None
    camera: str | None = None
    formats: tuple[str, ...] = ()
    min_width: int | None = None
    min_height: int | None = None
    near: tuple[float, float] | None = None
    within_km: float | None = field(default=None)

    def __post_init__(self) -> None:
        if (self.near is None) != (self.within_km is None):
            raise UsageError("a place filter needs both near (LAT,LON) and within_km (a distance)")
        if self.near is not None:
            lat, lon = self.near
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise UsageError(f"near {lat},{lon}: latitude must be within ±90 and longitude within ±180")
        if self.within_km is not None and not (self.within_km > 0 and math.isfinite(self.within_km)):
            raise UsageError(f"within_km {self.within_km}: give a distance above 0")
        unknown = [f for f in self.formats if f not in FORMAT_NAMES.values()]
        if unknown:
            raise UsageError(f"format {unknown[0]}: not a format retrieval indexes ({_format_list()})")
        if self.after is not None and self.before is not None and _start(self.after) >= _start(self.before):
            raise UsageError(f"after {self.after} is not before {self.before}: nothing can match")

    @property
    def is_empty(self) -> bool:
        """Whether the filter limits nothing (every image is allowed)."""
        return all(getattr(self, f.name) in (None, ()) for f in fields(self))

    @property
    def limits_files(self) -> bool:
        """Whether the filter looks at a file's own properties (its folder, its modification time), not only
        at its content's: then copies of one picture may match differently."""
        return bool(self.folders) or self.after is not None or self.before is not None

    @property
    def after_moment(self) -> datetime | None:
        return None if self.after is None else _start(self.after)

    @property
    def before_moment(self) -> datetime | None:
        return None if self.before is None else _start(self.before)

    def describe(self) -> str:
        """The filter as CLI options, for messages and logs."""
        parts = [f"--in {f}" for f in self.folders]
        parts += [f"--{name} {getattr(self, name)}" for name in ("after", "before") if getattr(self, name)]
        if self.camera:
            parts.append(f"--camera {self.camera}")
        if self.formats:
            parts.append("--format " + ",".join(self.formats))
        sizes = ("min_width", "min_height")
        parts += [f"--{n.replace('_', '-')} {getattr(self, n)}" for n in sizes if getattr(self, n)]
        if self.near is not None:
            parts.append(f"--near {self.near[0]},{self.near[1]} --within-km {self.within_km:g}")
        return " ".join(parts)


def _start(value: date) -> datetime:
    return value if isinstance(value, datetime) else datetime.combine(value, time())


def _format_list() -> str:
    return ", ".join(sorted(FORMAT_NAMES))


Style = Literal["cli", "http"]


def _name(option: str, style: Style) -> str:
    return f"--{option.replace('_', '-')}" if style == "cli" else option


def parse_filter(
    *,
    folders: Iterable[str] | None = None,
    after: str | None = None,
    before: str | None = None,
    camera: str | None = None,
    formats: str | Sequence[str] | None = None,
    min_width: str | int | None = None,
    min_height: str | int | None = None,
    near: str | None = None,
    within_km: str | float | None = None,
    style: Style = "cli",
) -> Filter | None:
    """A Filter from what a user typed, or None when nothing was given.

    `style` names the options in messages as the CLI (`--after`) or the HTTP API (`after`) spells them.

    Raises:
        UsageError: one line naming the value and what is expected, e.g.
            "--after 2023-13-01: not a date (YYYY-MM-DD)".
    """
    names = {"in": "--in" if style == "cli" else "in"}

    def fail(option: str, value: object, why: str) -> UsageError:
        return UsageError(f"{names.get(option) or _name(option, style)} {value}: {why}")

    folder_list: list[str] = []
    for raw in folders or ():
        text = str(raw).strip().replace("\\", "/")
        cleaned = text if text == "/" else text.rstrip("/")
        if not text.startswith("/"):
            cleaned = cleaned.strip("/")
            while cleaned.startswith("./"):
                cleaned = cleaned[2:]
        if not cleaned or cleaned == "." or any(part == ".." for part in cleaned.split("/")):
            raise fail("in", raw or '""', "not a folder (one under the indexed folder, or an absolute path)")
        folder_list.append(cleaned)
    if len(folder_list) > MAX_FOLDERS:
        raise fail("in", folder_list[MAX_FOLDERS], f"at most {MAX_FOLDERS} folders")

    def moment(option: str, value: str | None) -> date | None:
        if value is None or not value.strip():
            return None
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            raise fail(option, value, "not a date (YYYY-MM-DD)") from None

    def count(option: str, value: str | int | None) -> int | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            number = int(str(value).strip())
        except ValueError:
            raise fail(option, value, "not a whole number of pixels") from None
        if number < 1:
            raise fail(option, value, "give at least 1 pixel")
        return number

    camera_text = camera.strip() if camera is not None else None
    if camera is not None and not camera_text:
        raise fail("camera", '""', "give part of a camera's make or model")

    format_names: list[str] = []
    if formats is not None:
        items = formats.split(",") if isinstance(formats, str) else [p for f in formats for p in f.split(",")]
        for item in items:
            key = item.strip().lower().lstrip(".")
            if key not in FORMAT_NAMES:
                raise fail("format", item.strip() or '""', f"not a format ({_format_list()})")
            if FORMAT_NAMES[key] not in format_names:
                format_names.append(FORMAT_NAMES[key])

    place: tuple[float, float] | None = None
    if near is not None and near.strip():
        pieces = near.split(",")
        try:
            lat, lon = (float(p) for p in pieces) if len(pieces) == 2 else (math.nan, math.nan)
        except ValueError:
            lat = lon = math.nan
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            raise fail("near", near, "not a position (LAT,LON in degrees, e.g. 48.86,2.35)")
        place = (lat, lon)
    distance: float | None = None
    if within_km is not None and str(within_km).strip():
        try:
            distance = float(str(within_km).strip())
        except ValueError:
            distance = math.nan
        if not (math.isfinite(distance) and distance > 0):
            raise fail("within_km", within_km, "not a distance in km above 0")
    if (place is None) != (distance is None):
        given, missing = ("near", "within_km") if place is not None else ("within_km", "near")
        shown = near if place is not None else within_km
        raise fail(given, shown, f"needs {_name(missing, style)} too")

    after_day, before_day = moment("after", after), moment("before", before)
    if after_day is not None and before_day is not None and _start(after_day) >= _start(before_day):
        raise fail("before", before, f"is not later than {_name('after', style)} {after}: nothing can match")

    flt = Filter(
        folders=tuple(dict.fromkeys(folder_list)),
        after=after_day,
        before=before_day,
        camera=camera_text,
        formats=tuple(format_names),
        min_width=count("min_width", min_width),
        min_height=count("min_height", min_height),
        near=place,
        within_km=distance,
    )
    return None if flt.is_empty else flt


def haversine_km(lat: np.ndarray, lon: np.ndarray, at: tuple[float, float]) -> np.ndarray:
    """Great-circle distances (km) from `at` to arrays of latitudes and longitudes in degrees."""
    lat1, lon1 = np.radians(at[0]), np.radians(at[1])
    lat2, lon2 = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def bounding_box(at: tuple[float, float], km: float) -> tuple[float, float, list[tuple[float, float]]]:
    """A box holding every point within `km` of `at`: (lat low, lat high, longitude ranges) with the
    longitude split in two where it crosses ±180 and whole where the circle holds a pole."""
    lat, lon = at
    dlat = math.degrees(km / EARTH_RADIUS_KM)
    low, high = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    if low <= -90.0 or high >= 90.0 or km >= math.pi * EARTH_RADIUS_KM / 2:
        return low, high, [(-180.0, 180.0)]
    # The widest longitude span of the circle (at the latitude where it is widest), exact on a sphere.
    ratio = math.sin(km / EARTH_RADIUS_KM) / math.cos(math.radians(lat))
    if ratio >= 1.0:
        return low, high, [(-180.0, 180.0)]
    dlon = math.degrees(math.asin(ratio))
    west, east = lon - dlon, lon + dlon
    if west < -180.0:
        return low, high, [(west + 360.0, 180.0), (-180.0, east)]
    if east > 180.0:
        return low, high, [(west, 180.0), (-180.0, east - 360.0)]
    return low, high, [(west, east)]
