"""Filters (folder, dates, camera, format, size, place) on every query form: the Python API, the CLI, HTTP.

The library is drawn here: photos with EXIF written by Pillow (camera make and model, DateTimeOriginal, a
GPS IFD), PNG scans without EXIF whose modification time is set, and a byte-identical copy in another
folder. The `classic` embedder needs no weights.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image
from retrieval_cli.main import app as cli_app
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine, Filter, parse_filter
from retrieval.errors import UsageError
from retrieval.files.decoding import DECODERS, decode_image
from retrieval.metadata.filters import FORMAT_NAMES, bounding_box, haversine_km
from retrieval.search.queries import Query, QueryPart
from retrieval.serve.app import create_app

PARIS = (48.8584, 2.2945)
CHAMONIX = (45.9237, 6.8694)
runner = CliRunner()


def exif_jpeg(
    path: Path,
    seed: int,
    *,
    make: str | None = None,
    model: str | None = None,
    taken: str | None = None,
    gps: tuple[float, float] | None = None,
    size: tuple[int, int] = (192, 144),
) -> Path:
    """A drawn photo saved as JPEG with the EXIF a camera would write."""
    exif = Image.Exif()
    if make:
        exif[ExifTags.Base.Make] = make
    if model:
        exif[ExifTags.Base.Model] = model
    if taken:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
    if gps:
        ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
        for (ref_tag, value_tag), degrees, refs in (
            ((ExifTags.GPS.GPSLatitudeRef, ExifTags.GPS.GPSLatitude), gps[0], "NS"),
            ((ExifTags.GPS.GPSLongitudeRef, ExifTags.GPS.GPSLongitude), gps[1], "EW"),
        ):
            whole = abs(degrees)
            d, m = int(whole), int((whole - int(whole)) * 60)
            s = round(((whole - d) * 60 - m) * 60, 4)
            ifd[ref_tag] = refs[0] if degrees >= 0 else refs[1]
            ifd[value_tag] = (float(d), float(m), float(s))
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_photo(seed, size).save(path, "JPEG", quality=90, exif=exif)
    return path


def local_ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


@dataclass
class Library:
    root: Path
    home: Path
    ids: dict[str, int]  # path relative to root -> content id

    def path(self, name: str) -> str:
        return str(self.root / name)

    def names(self, ids: set[int]) -> set[str]:
        """Each content's first file (in path order) among the given ids."""
        by_id: dict[int, str] = {}
        for name, i in sorted(self.ids.items()):
            by_id.setdefault(i, name)
        return {by_id[i] for i in ids}


def build_library(root: Path) -> None:
    for i in range(4):  # summer 2023, Paris, Canon
        exif_jpeg(
            root / "Holidays" / "2023" / f"beach{i}.jpg",
            i,
            make="Canon",
            model="Canon EOS R5",
            taken=f"2023:07:1{i} 10:00:00",
            gps=PARIS,
        )
    for i in range(3):  # winter 2024, Chamonix, Nikon
        exif_jpeg(
            root / "Holidays" / "2024" / f"ski{i}.jpg",
            10 + i,
            make="NIKON CORPORATION",
            model="NIKON Z 6",
            taken=f"2024:02:0{i + 1} 09:00:00",
            gps=CHAMONIX,
        )
    for i in range(2):  # a phone without a position
        exif_jpeg(
            root / "Phone" / f"img{i}.jpg",
            20 + i,
            make="Apple",
            model="iPhone 12",
            taken="2023:03:05 12:00:00",
        )
    (root / "Work").mkdir(parents=True)
    for i in range(2):  # scans: PNG, larger, no EXIF; modified in March 2022
        path = root / "Work" / f"scan{i}.png"
        draw_photo(30 + i, (400, 300)).save(path, "PNG")
        os.utime(path, ns=(local_ns(datetime(2022, 3, 1, 12)),) * 2)
    # The same bytes as a Holidays photo, in Work: one image with two files.
    shutil.copy2(root / "Holidays" / "2023" / "beach0.jpg", root / "Work" / "copy_of_beach0.jpg")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    base = tmp_path_factory.mktemp("filters")
    root = base / "photos"
    build_library(root)
    home = base / "home"
    with Engine("default", home=home, model="classic") as engine:
        report = engine.ingest(root)
        assert not report.failed
        ids = {
            str(p.relative_to(root)): engine.meta.content_id_for_path(p) for p in sorted(root.rglob("*.*"))
        }
    assert all(v is not None for v in ids.values())
    return Library(root, home, ids)  # type: ignore[arg-type]


@pytest.fixture
def engine(library: Library) -> Iterator[Engine]:
    with Engine("default", home=library.home) as opened:
        yield opened


BEACH = {f"Holidays/2023/beach{i}.jpg" for i in range(4)}
SKI = {f"Holidays/2024/ski{i}.jpg" for i in range(3)}
PHONE = {"Phone/img0.jpg", "Phone/img1.jpg"}
SCANS = {"Work/scan0.png", "Work/scan1.png"}
EVERYTHING = BEACH | SKI | PHONE | SCANS

#: (CLI options, HTTP query parameters, the images they allow: each content's first file in path order).
CASES = [
    (["--in", "Holidays"], {"in": "Holidays"}, BEACH | SKI),
    (["--in", "Holidays/2024/"], {"in": "Holidays/2024/"}, SKI),
    (
        ["--in", "Phone", "--in", "Work"],
        {"in": ["Phone", "Work"]},
        PHONE | SCANS | {"Holidays/2023/beach0.jpg"},
    ),
    (["--in", "Holi"], {"in": "Holi"}, set()),  # a prefix of a folder's name is not its folder
    (["--after", "2024-01-01"], {"after": "2024-01-01"}, SKI),
    (["--before", "2023-01-01"], {"before": "2023-01-01"}, SCANS),  # no EXIF: modification time
    (
        ["--after", "2023-03-05", "--before", "2023-07-12"],
        {"after": "2023-03-05", "before": "2023-07-12"},
        PHONE | {"Holidays/2023/beach0.jpg", "Holidays/2023/beach1.jpg"},
    ),
    (["--camera", "canon"], {"camera": "canon"}, BEACH),
    (["--camera", "IPHONE"], {"camera": "IPHONE"}, PHONE),
    (["--camera", "z 6"], {"camera": "z 6"}, SKI),
    (["--format", "png"], {"format": "png"}, SCANS),
    (["--format", "jpeg,png"], {"format": "jpeg,png"}, EVERYTHING),
    (["--min-width", "300"], {"min_width": "300"}, SCANS),
    (["--min-height", "145"], {"min_height": "145"}, SCANS),
    (["--near", "48.86,2.35", "--within-km", "10"], {"near": "48.86,2.35", "within_km": "10"}, BEACH),
    (["--near", "46.0,6.9", "--within-km", "25"], {"near": "46.0,6.9", "within_km": "25"}, SKI),
    (["--near", "46.0,6.9", "--within-km", "1"], {"near": "46.0,6.9", "within_km": "1"}, set()),
    (["--in", "Holidays", "--camera", "nikon"], {"in": "Holidays", "camera": "nikon"}, SKI),
]
CASE_IDS = [" ".join(c[0]) for c in CASES]


def _cli_filter(options: list[str]) -> Filter | None:
    """The same options as `parse_filter` arguments (what the CLI does with them)."""
    kw: dict[str, object] = {"folders": []}
    names = {"--format": "formats"}
    for option, value in zip(options[::2], options[1::2], strict=True):
        if option == "--in":
            kw["folders"].append(value)  # type: ignore[attr-defined]
        else:
            kw[names.get(option, option[2:].replace("-", "_"))] = value
    return parse_filter(**kw)  # type: ignore[arg-type]


# -- the Python API ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "_params", "expected"), CASES, ids=CASE_IDS)
def test_each_filter_limits_an_image_search_to_the_images_it_allows(
    library, engine, options, _params, expected
):
    flt = _cli_filter(options)
    assert flt is not None
    assert library.names(set(engine.meta.allowed_ids(flt).tolist())) == expected
    hits = engine.search_image(library.root / "Holidays" / "2023" / "beach1.jpg", k=50, filter=flt)
    assert {library.ids.get(h.relative_path, -1) for h in hits} == {library.ids[name] for name in expected}
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_a_copy_is_allowed_by_any_of_its_files_and_the_hit_shows_the_file_that_matched(library, engine):
    beach0 = library.ids["Holidays/2023/beach0.jpg"]
    assert library.ids["Work/copy_of_beach0.jpg"] == beach0
    query = library.root / "Holidays" / "2023" / "beach1.jpg"
    unfiltered = {h.id: h for h in engine.search_image(query, k=50)}
    in_work = {h.id: h for h in engine.search_image(query, k=50, filter=Filter(folders=("Work",)))}
    assert in_work[beach0].path == library.path("Work/copy_of_beach0.jpg")
    assert in_work[beach0].copies == 2
    assert unfiltered[beach0].path == library.path("Holidays/2023/beach0.jpg")


def test_an_absolute_folder_is_matched_on_the_paths(library, engine):
    flt = Filter(folders=(str(library.root / "Holidays" / "2023"),))
    assert library.names(set(engine.meta.allowed_ids(flt).tolist())) == BEACH


def test_similar_with_a_filter_leaves_the_example_out_and_keeps_to_the_filter(library, engine):
    ski0 = library.ids["Holidays/2024/ski0.jpg"]
    hits = engine.similar(ski0, k=50, filter=Filter(folders=("Holidays/2024",)))
    assert {h.id for h in hits} == {library.ids[n] for n in SKI} - {ski0}


def test_min_score_still_applies_inside_a_filter(library, engine):
    query = library.root / "Holidays" / "2023" / "beach1.jpg"
    flt = Filter(folders=("Holidays",))
    everything = engine.search_image(query, k=50, filter=flt)
    cut = (everything[1].score + everything[-1].score) / 2
    kept = engine.search_image(query, k=50, filter=flt, min_score=cut)
    assert 0 < len(kept) < len(everything)
    assert all(h.score >= cut for h in kept)
    assert {h.id for h in kept} <= {h.id for h in everything}


def test_a_mixed_query_keeps_to_the_filter(library, engine):
    like = library.ids["Holidays/2024/ski1.jpg"]
    query = Query.of(
        QueryPart("image", library.root / "Phone" / "img0.jpg"),
        QueryPart("id", like),
        QueryPart("image", library.root / "Work" / "scan0.png", -1),
    )
    flt = Filter(folders=("Holidays",), camera="nikon")
    hits = engine.search(query, k=50, filter=flt)
    assert {h.id for h in hits} == {library.ids[n] for n in SKI} - {like}


def test_a_filter_that_matches_nothing_gives_no_results_and_no_groups(library, engine):
    flt = Filter(camera="Leica")
    assert engine.meta.allowed_ids(flt).size == 0
    assert engine.search_image(library.root / "Phone" / "img0.jpg", k=5, filter=flt) == []
    report = engine.duplicates(filter=flt)
    assert (report.images, report.groups) == (0, [])


def test_duplicates_group_only_the_images_in_the_filter(library, engine):
    beach0 = library.ids["Holidays/2023/beach0.jpg"]
    everywhere = engine.duplicates()
    assert any(m.id == beach0 for g in everywhere.groups for m in g.members)  # two files, one image
    scans = engine.duplicates(filter=Filter(formats=("PNG",)))
    assert scans.images == 2
    assert not any(m.id == beach0 for g in scans.groups for m in g.members)


def test_a_map_draws_its_results_and_their_neighbours_from_the_filter(library, engine):
    flt = Filter(folders=("Holidays",))
    allowed = set(engine.meta.allowed_ids(flt).tolist())
    query = Query.of(QueryPart("image", library.root / "Phone" / "img0.jpg"))
    m = engine.map(query, n=4, expand=2, filter=flt)
    ids = {p.id for p in m.points if p.role != "query"}
    assert ids and ids <= allowed
    assert m.n_results == 4


# -- the parser --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"after": "2023-13-01"}, "--after 2023-13-01: not a date (YYYY-MM-DD)"),
        ({"before": "yesterday"}, "--before yesterday: not a date (YYYY-MM-DD)"),
        ({"after": "2024-01-01", "before": "2023-01-01"}, "--before 2023-01-01: is not later than --after"),
        ({"camera": "  "}, '--camera "": give part of'),
        ({"formats": "jpeg,psd"}, "--format psd: not a format"),
        ({"min_width": "wide"}, "--min-width wide: not a whole number"),
        ({"min_height": "0"}, "--min-height 0: give at least 1 pixel"),
        ({"near": "48.8"}, "--near 48.8: not a position (LAT,LON"),
        ({"near": "91,0", "within_km": "1"}, "--near 91,0: not a position"),
        ({"near": "48.8,2.3"}, "--near 48.8,2.3: needs --within-km too"),
        ({"within_km": "5"}, "--within-km 5: needs --near too"),
        ({"near": "48.8,2.3", "within_km": "-1"}, "--within-km -1: not a distance"),
        ({"folders": ["../elsewhere"]}, "--in ../elsewhere: not a folder"),
    ],
)
def test_a_malformed_filter_is_one_line_naming_the_value(kwargs, message):
    with pytest.raises(UsageError) as caught:
        parse_filter(**kwargs)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_http_spelling_names_the_parameters_as_the_api_does():
    with pytest.raises(UsageError, match=r"^min_width wide: not a whole number"):
        parse_filter(min_width="wide", style="http")


def test_nothing_given_is_no_filter_and_formats_are_the_recorded_names():
    assert parse_filter(folders=[], camera=None) is None
    assert set(FORMAT_NAMES.values()) == set(DECODERS.values())
    assert parse_filter(formats="JPG, tif,heic").formats == ("JPEG", "TIFF", "HEIC/HEIF")  # type: ignore[union-attr]


def test_the_bounding_box_holds_the_circle_also_across_the_antimeridian():
    rng = np.random.default_rng(0)
    for centre in [(10.0, 179.9), (-60.0, -179.5), (89.5, 0.0), (0.0, 0.0)]:
        low, high, spans = bounding_box(centre, 200.0)
        lat = rng.uniform(-90, 90, 200_000)
        lon = rng.uniform(-180, 180, 200_000)
        inside = haversine_km(lat, lon, centre) <= 200.0
        boxed = (lat >= low) & (lat <= high) & np.any([(lon >= w) & (lon <= e) for w, e in spans], axis=0)
        assert inside.any() and not (inside & ~boxed).any()


def test_exif_camera_lens_and_position_are_read_while_decoding(tmp_path):
    path = exif_jpeg(tmp_path / "a.jpg", 1, make="Canon", model="Canon EOS R5", gps=(-33.8568, 151.2153))
    info = decode_image(path).info
    assert (info.camera_make, info.camera_model) == ("Canon", "Canon EOS R5")
    assert info.gps_lat == pytest.approx(-33.8568, abs=1e-4) and info.gps_lon == pytest.approx(
        151.2153, abs=1e-4
    )
    assert decode_image(exif_jpeg(tmp_path / "b.jpg", 2)).info.gps_lat is None


# -- ingest: the columns are recorded, and filled again on request -----------------------------------------


def test_ingest_records_the_folder_relative_to_the_indexed_root(library):
    db = library.home / "default" / "meta.sqlite"
    with sqlite3.connect(db) as conn:
        folders = dict(conn.execute("SELECT path, folder FROM files"))
    assert folders[library.path("Holidays/2023/beach0.jpg")] == "Holidays/2023"
    assert folders[library.path("Work/scan0.png")] == "Work"


def test_refresh_metadata_fills_the_columns_without_embedding_again(tmp_path):
    root = tmp_path / "photos"
    build_library(root)
    with Engine("old", model="classic") as engine:
        engine.ingest(root)
        db = engine.dir / "meta.sqlite"
    # As an index from before revision 0003 is after its upgrade: the new columns empty.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE contents SET camera_make = NULL, camera_model = NULL, lens = NULL, gps_lat = NULL, "
            "gps_lon = NULL"
        )
    with Engine("old") as engine:
        again = engine.ingest(root)
        assert again.embedded == 0 and engine.meta.allowed_ids(Filter(camera="canon")).size == 0
    result = runner.invoke(
        cli_app, ["ingest", str(root), "--index", "old", "--refresh-metadata", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "metadata read again for 11 images" in result.output
    with Engine("old") as engine:
        assert engine.meta.allowed_ids(Filter(camera="canon")).size == 4
        assert engine.meta.allowed_ids(Filter(near=PARIS, within_km=1)).size == 4
        report = engine.ingest(root, refresh_metadata=True)
        assert (report.embedded, report.refreshed) == (0, 11)


# -- the CLI -----------------------------------------------------------------------------------------------


def cli(library: Library, *args: str):
    return runner.invoke(cli_app, [*args, "--home", str(library.home)])


@pytest.mark.parametrize(("options", "_params", "expected"), CASES, ids=CASE_IDS)
def test_each_filter_works_on_the_command_line(library, options, _params, expected):
    query = library.path("Holidays/2023/beach1.jpg")
    result = cli(library, "search", "--image", query, "-k", "50", "--json", *options)
    assert result.exit_code == 0, result.output
    found = {
        library.ids.get(str(Path(r["path"]).relative_to(library.root)))
        for r in json.loads(result.stdout)["results"]
    }
    assert found == {library.ids[n] for n in expected}


def test_similar_map_and_duplicates_take_the_filter_options(library, tmp_path):
    ski0 = str(library.ids["Holidays/2024/ski0.jpg"])
    result = cli(library, "similar", ski0, "--in", "Holidays/2024", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 2
    result = cli(library, "duplicates", "--format", "png", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["images"] == 2
    out = tmp_path / "map.html"
    result = cli(library, "map", "--similar", ski0, "-n", "4", "--in", "Holidays", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    mapped = {p["id"] for p in json.loads(result.stdout)["points"] if p["role"] != "query"}
    assert mapped <= {library.ids[n] for n in BEACH | SKI}


def test_a_filter_that_matches_nothing_prints_no_results_and_exits_0(library):
    result = cli(library, "search", "--image", library.path("Phone/img0.jpg"), "--camera", "Leica")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no results"


def test_a_map_of_a_filter_that_matches_nothing_writes_nothing_and_exits_0(library, engine, tmp_path):
    like = library.ids["Phone/img0.jpg"]
    assert engine.map(Query.of(QueryPart("id", like)), n=4, filter=Filter(camera="Leica")).points == ()
    out = tmp_path / "map.html"
    result = cli(library, "map", "--similar", str(like), "-n", "4", "--camera", "Leica", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "no images match the filter" in result.stdout and not out.exists()
    as_json = cli(library, "map", "--similar", str(like), "-n", "4", "--camera", "Leica", "--json")
    assert as_json.exit_code == 0
    payload = json.loads(as_json.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert payload["points"] == [] and payload["trustworthiness"] is None and payload["out"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--after", "2023-13-01"], "error: --after 2023-13-01: not a date (YYYY-MM-DD)"),
        (["--format", "psd"], "error: --format psd: not a format"),
        (["--min-width", "x"], "error: --min-width x: not a whole number"),
        (["--near", "1,2"], "error: --near 1,2: needs --within-km too"),
    ],
)
def test_a_malformed_filter_option_is_one_line_and_exit_2(library, options, message):
    result = cli(library, "search", "--image", library.path("Phone/img0.jpg"), *options)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


# -- HTTP --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(library: Library) -> Iterator[TestClient]:
    with (
        Engine("default", home=library.home) as served,
        TestClient(create_app(served), base_url="http://127.0.0.1:8000") as test_client,
    ):
        yield test_client


@pytest.mark.parametrize(("_options", "params", "expected"), CASES, ids=CASE_IDS)
def test_each_filter_works_over_http(library, client, _options, params, expected):
    query = library.ids["Holidays/2023/beach1.jpg"]
    response = client.get(f"/api/similar/{query}", params={"k": 50, **params})
    assert response.status_code == 200, response.text
    found = {library.ids[r["path"]] for r in response.json()["results"]}
    assert found == {library.ids[n] for n in expected} - {query}


def test_an_uploaded_image_search_and_a_map_take_the_filter_over_http(library, client):
    upload = (library.root / "Phone" / "img0.jpg").read_bytes()
    response = client.post(
        "/api/search/image",
        params={"camera": "nikon", "k": 50},
        files={"image": ("q.jpg", upload, "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    assert {r["path"] for r in response.json()["results"]} == SKI
    like = library.ids["Holidays/2024/ski0.jpg"]
    response = client.get("/api/map", params={"like": like, "n": 4, "in": "Holidays"})
    assert response.status_code == 200, response.text
    paths = {p["path"] for p in response.json()["points"] if p["role"] != "query"}
    assert paths <= BEACH | SKI


def test_a_filter_that_matches_nothing_is_an_empty_result_over_http(library, client):
    response = client.get(f"/api/similar/{library.ids['Phone/img0.jpg']}", params={"camera": "Leica"})
    assert response.status_code == 200 and response.json()["results"] == []
    mapped = client.get("/api/map", params={"like": library.ids["Phone/img0.jpg"], "n": 4, "camera": "Leica"})
    assert mapped.status_code == 200 and mapped.json()["points"] == []
    assert mapped.json()["trustworthiness"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "2023-13-01"}, "after 2023-13-01: not a date (YYYY-MM-DD)"),
        ({"format": "psd"}, "format psd: not a format"),
        ({"near": "1,2"}, "near 1,2: needs within_km too"),
        ({"min_height": "tall"}, "min_height tall: not a whole number"),
    ],
)
def test_a_malformed_filter_is_a_422_with_one_line_over_http(library, client, params, message):
    response = client.get(f"/api/similar/{library.ids['Phone/img0.jpg']}", params=params)
    assert response.status_code == 422
    assert response.json()["error"].startswith(message) and "\n" not in response.json()["error"]


def test_the_filter_parameters_are_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    for route in ("/api/search", "/api/similar/{image_id}", "/api/map"):
        names = {p["name"] for p in schema["paths"][route]["get"]["parameters"]}
        assert {
            "in",
            "after",
            "before",
            "camera",
            "format",
            "min_width",
            "min_height",
            "near",
            "within_km",
        } <= names
    names = {p["name"] for p in schema["paths"]["/api/search/image"]["post"]["parameters"]}
    assert {"in", "after", "camera"} <= names


def test_a_filters_ids_are_kept_until_another_process_changes_the_database(tmp_path):
    root = tmp_path / "photos"
    build_library(root)
    flt = Filter(folders=("Holidays",))
    with Engine("kept", model="classic") as engine:
        engine.ingest(root)
        first = engine.meta.allowed_ids(flt)
        again = engine.meta.allowed_ids(Filter(folders=("Holidays",)))
        assert again is first and not first.flags.writeable  # one array: the store reuses its mask
        assert len(first) == len(BEACH | SKI)
        exif_jpeg(root / "Holidays" / "2025" / "new.jpg", 40, make="Canon", taken="2025:01:01 10:00:00")
        with Engine("kept") as writer:  # another engine (as `watch` beside `serve`) commits a new photo
            writer.ingest(root)
        later = engine.meta.allowed_ids(flt)
        assert len(later) == len(first) + 1
