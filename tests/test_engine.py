"""The Python API end to end, mostly with the `classic` embedder (no weights, fast)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from support.photos import draw_photo

from retrieval.engine import Engine
from retrieval.errors import (
    IndexBusyError,
    IndexMismatchError,
    IndexNotFoundError,
    QueryError,
)
from retrieval.search.queries import Query, QueryPart


def test_resized_recompressed_copy_finds_its_original_at_rank_1(make_photos, tmp_path):
    paths = make_photos(20)
    with Engine(model="classic") as engine:
        report = engine.ingest(paths[0].parent)
        assert (report.added, report.embedded, len(report.failed)) == (20, 20, 0)
        for original in paths[::5]:
            query = tmp_path / f"q-{original.stem}.jpg"
            with Image.open(original) as im:
                im.resize((im.width // 2, im.height // 2)).save(query, quality=55)
            hits = engine.search_image(query, k=3)
            assert hits[0].path == str(original)
            assert hits[0].score > hits[1].score


def test_unchanged_files_are_skipped_on_reingest(make_photos):
    folder = make_photos(6)[0].parent
    with Engine(model="classic") as engine:
        engine.ingest(folder)
        report = engine.ingest(folder)
    assert (report.unchanged, report.added, report.embedded, report.removed) == (6, 0, 0, 0)


def test_new_modified_and_deleted_files_are_picked_up(make_photos):
    paths = make_photos(5)
    folder = paths[0].parent
    with Engine(model="classic") as engine:
        engine.ingest(folder)
        old_id = engine.meta.content_id_for_path(paths[1])
        make_photos(1, start=100)  # new
        draw_photo(777).save(paths[1], "JPEG")  # modified in place
        os.utime(paths[1], ns=(1, 1))
        paths[2].unlink()  # deleted
        report = engine.ingest(folder)
        assert (report.added, report.updated, report.removed, report.embedded) == (1, 1, 1, 2)
        assert old_id not in engine.store  # the old version's vector is gone
        new_id = engine.meta.content_id_for_path(paths[1])
        assert new_id != old_id and new_id in engine.store
        assert engine.meta.content_id_for_path(paths[2]) is None
        assert len(engine.store) == 5 == engine.meta.counts()["embedded"]


def test_moved_file_is_not_embedded_again(make_photos):
    paths = make_photos(4)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        old_id = engine.meta.content_id_for_path(paths[0])
        target = paths[0].parent / "sub" / "moved.jpg"
        target.parent.mkdir()
        shutil.move(paths[0], target)
        report = engine.ingest(paths[0].parent)
        assert (report.embedded, report.linked, report.removed) == (0, 1, 1)
        assert engine.meta.content_id_for_path(target) == old_id
        assert len(engine.store) == 4


def test_identical_copies_are_recorded_and_embedded_once(make_photos):
    paths = make_photos(3)
    shutil.copy(paths[0], paths[0].parent / "copy-a.jpg")
    shutil.copy(paths[0], paths[0].parent / "copy-b.jpg")
    with Engine(model="classic") as engine:
        report = engine.ingest(paths[0].parent)
        assert (report.added, report.embedded, report.linked) == (5, 3, 2)
        assert len(engine.store) == 3
        hit = engine.search_image(paths[0], k=1)[0]
        assert hit.copies == 3


def test_no_prune_keeps_deleted_files(make_photos):
    paths = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        paths[0].unlink()
        report = engine.ingest(paths[0].parent, prune=False)
        assert report.removed == 0 and len(engine.store) == 3
        report = engine.ingest(paths[0].parent)
        assert report.removed == 1 and len(engine.store) == 2


def test_bad_files_are_recorded_and_the_ingest_goes_on(make_photos):
    paths = make_photos(3)
    (paths[0].parent / "notes.jpg").write_text("not an image")
    (paths[0].parent / "empty.png").write_bytes(b"")
    with Engine(model="classic") as engine:
        report = engine.ingest(paths[0].parent)
        assert report.embedded == 3
        failed = dict(report.failed)
        assert set(failed) == {str(paths[0].parent / "notes.jpg"), str(paths[0].parent / "empty.png")}
        assert all(reason for reason in failed.values())
        assert engine.meta.counts()["failures"] == 2
        # unchanged failures are not retried, but still reported
        again = engine.ingest(paths[0].parent)
        assert len(again.failed) == 2 and again.embedded == 0


def test_similar_leaves_out_the_image_itself(make_photos):
    paths = make_photos(6)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        by_path = engine.similar(paths[3], k=5)
        the_id = engine.meta.content_id_for_path(paths[3])
        by_id = engine.similar(the_id, k=5)
        assert [h.id for h in by_path] == [h.id for h in by_id]
        assert the_id not in {h.id for h in by_id} and len(by_id) == 5


def test_subtracting_an_image_moves_results_away_from_it(make_photos):
    paths = make_photos(8)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        a = engine.meta.content_id_for_path(paths[0])
        plain = engine.search(Query.of(QueryPart("id", a)), k=7)
        minus = engine.search(Query.of(QueryPart("id", a), QueryPart("image", paths[1], -1)), k=7)
        pos = {h.path: h.rank for h in minus}
        assert pos[str(paths[1])] >= {h.path: h.rank for h in plain}[str(paths[1])]
        assert pos[str(paths[1])] == 7  # the subtracted image ends last


def test_min_score_drops_weak_matches(make_photos):
    paths = make_photos(6)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        hits = engine.search_image(paths[0], k=6)
        cut = (hits[0].score + hits[1].score) / 2
        strong = engine.search_image(paths[0], k=6, min_score=cut)
        assert [h.path for h in strong] == [str(paths[0])]


def test_resnet_index_round_trip_and_text_is_refused(make_photos):
    paths = make_photos(3)
    with pytest.warns(UserWarning, match="random"), Engine(model="resnet18", pretrained=None) as engine:
        engine.ingest(paths[0].parent)
        assert engine.search_image(paths[2], k=1)[0].path == str(paths[2])
        with pytest.raises(QueryError, match="text"):
            engine.search_text("a dog")


def test_tiny_clip_index_answers_text_queries(make_photos):
    paths = make_photos(4)
    with pytest.warns(UserWarning, match="random"), Engine(model="clip:tiny-test", pretrained=None) as engine:
        engine.ingest(paths[0].parent)
        hits = engine.search_text("a red square", k=4)
        assert sorted(h.path for h in hits) == sorted(map(str, paths))
        assert all(-1.0 <= h.score <= 1.0 for h in hits)


def test_warm_up_warms_the_vector_store_too(make_photos, monkeypatch):
    from retrieval.vectors.hnsw.store import VectorStore

    paths = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    warmed: list[VectorStore] = []
    real = VectorStore.warm_up
    monkeypatch.setattr(VectorStore, "warm_up", lambda self: warmed.append(self) or real(self))
    with Engine(model="classic") as engine:
        engine.warm_up()
        assert warmed == [engine.store]
        assert len(engine.search_image(paths[0], k=3)) == 3


def test_a_warm_refresh_switches_a_reader_and_leaves_a_store_this_engine_writes_to_its_searches(make_photos):
    paths = make_photos(4)
    folder = paths[0].parent
    with Engine(model="classic") as writer:
        writer.ingest(folder)  # this engine keeps the writable store
        with Engine(model="classic") as reader:
            reader.warm_up()
            before = reader.store.generation
            assert reader.refresh(warm=True) is False  # nothing new
            make_photos(2, start=4)
            with Engine(model="classic") as other:
                other.ingest(folder)
            assert reader.refresh(warm=True) is True
            assert reader.store.generation > before and len(reader.store) == 6
        mine = writer.store
        assert mine.writable and writer.refresh(warm=True) is False and mine.generation == before
        assert len(writer.search_image(paths[0], k=10)) == 6  # its own searches switch, under the read lock


def test_another_model_on_an_existing_index_is_refused(make_photos):
    paths = make_photos(2)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    with pytest.raises(IndexMismatchError, match="classic"):
        Engine(model="resnet18", pretrained=None)


def test_missing_index_is_a_clear_error():
    with Engine("nothing-here") as engine, pytest.raises(IndexNotFoundError, match="retrieval ingest"):
        engine.search_text("x")


def test_a_second_writer_gets_index_busy(make_photos):
    paths = make_photos(2)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        lock = engine._lock()
        lock.acquire()
        try:
            with Engine() as other, pytest.raises(IndexBusyError, match="busy"):
                other.ingest(paths[0].parent)
        finally:
            lock.release()


def test_doctor_finds_and_fixes_a_vector_without_row(make_photos):
    paths = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        store = engine._open_for_writing()
        store.add(np.array([999], dtype=np.int64), store.vectors([next(iter(engine.meta.embedded_ids()))]))
        store.save()
    with Engine() as engine:
        report = engine.doctor()
        assert report.vectors_without_row == 1 and not report.ok
    with Engine() as engine:
        assert engine.doctor(fix=True).fixed
    with Engine() as engine:
        assert engine.doctor().ok and 999 not in engine.store


def test_reconcile_reads_every_embedded_id_only_when_the_counts_disagree(make_photos, monkeypatch):
    from retrieval.ingest import pipeline
    from retrieval.metadata.store import MetadataStore

    paths = make_photos(4)
    listed: list[int] = []
    embedded_ids = MetadataStore.embedded_ids
    monkeypatch.setattr(MetadataStore, "embedded_ids", lambda self: (listed.append(1), embedded_ids(self))[1])
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        store = engine._open_for_writing()
        listed.clear()
        assert pipeline.reconcile(engine.meta, store) == (0, 0)
        assert not listed  # what each watch batch pays: counts, not every id
        victim = next(iter(embedded_ids(engine.meta)))
        store.remove([victim])  # a vector lost: the counts disagree
        store.save()
        assert pipeline.reconcile(engine.meta, store) == (0, 1)
        assert listed and victim not in embedded_ids(engine.meta)


def test_remove_forgets_files_but_keeps_them_on_disk(make_photos):
    paths = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        report = engine.remove([paths[0], paths[0].parent / "never-indexed.jpg"])
        assert report.removed == [str(paths[0])]
        assert report.not_indexed == [str(paths[0].parent / "never-indexed.jpg")]
        assert paths[0].exists() and len(engine.store) == 2
        assert str(paths[0]) not in {h.path for h in engine.search_image(paths[0], k=3)}


def test_vectors_without_rows_do_not_cut_results_short(make_photos):
    paths = make_photos(6)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        store = engine._open_for_writing()
        # Stray vectors as an interrupted write leaves them: copies of a real one, so they rank first.
        near = store.vectors([engine.meta.content_id_for_path(paths[0])])
        store.add(np.arange(900, 910, dtype=np.int64), np.repeat(near, 10, axis=0))
        hits = engine.search_image(paths[0], k=4)
        assert len(hits) == 4 and hits[0].path == str(paths[0])
        assert all(h.id < 900 for h in hits)


def test_removing_a_file_with_a_non_utf8_name_is_not_a_crash(make_photos):
    paths = make_photos(2)
    odd = paths[0].parent / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(paths[1], odd)
    with Engine(model="classic") as engine:
        report = engine.ingest(paths[0].parent)
        assert [reason for _, reason in report.failed] == [
            "file name is not valid UTF-8; rename the file to index it"
        ]
        assert engine.remove([odd]).removed == [] and engine.remove([paths[0]]).removed == [str(paths[0])]


# ---- nested and overlapping folders ---------------------------------------------------------------


def nested_folders(make_photos, tmp_path):
    """A folder with three photos of its own and three in its sub-folder d01, plus a broken file in each."""
    parent = tmp_path / "photos"
    outside = make_photos(3, parent)
    inside = make_photos(3, parent / "d01", start=10)
    (parent / "broken.jpg").write_bytes(b"not a photo")
    (parent / "d01" / "broken.jpg").write_bytes(b"not a photo either")
    return parent, parent / "d01", outside, inside


@pytest.mark.parametrize("child_first", [False, True])
def test_a_folder_and_its_sub_folder_keep_one_row_per_file_whichever_is_ingested_first(
    make_photos, tmp_path, child_first
):
    parent, child, outside, inside = nested_folders(make_photos, tmp_path)
    with Engine(model="classic") as engine:
        first, second = (child, parent) if child_first else (parent, child)
        engine.ingest(first)
        report = engine.ingest(second)
        if child_first:  # the parent adopts what the child found and adds the rest
            assert (report.unchanged, report.added, report.removed, len(report.failed)) == (3, 3, 0, 2)
        else:  # the child finds its files already indexed, and prunes nothing outside itself
            assert (report.unchanged, report.added, report.removed, len(report.failed)) == (3, 0, 0, 1)
        for folder in (parent, child):  # again, in either order: nothing changes
            again = engine.ingest(folder)
            assert (again.added, again.updated, again.removed, again.embedded) == (0, 0, 0, 0)
        counts = engine.meta.counts()
        assert (counts["files"], counts["embedded"], counts["failures"], counts["roots"]) == (6, 6, 2, 2)
        hits = engine.search_image(outside[0], k=20)
        assert sorted(h.path for h in hits) == sorted(str(p) for p in outside + inside)  # each once
        assert len(engine.remove([inside[0], outside[0]]).removed) == 2
        assert engine.meta.counts()["files"] == 4 and len(engine.store) == 4


@pytest.mark.parametrize("child_first", [False, True])
def test_a_file_deleted_under_the_sub_folder_is_pruned_by_an_ingest_of_the_parent(
    make_photos, tmp_path, child_first
):
    parent, child, outside, inside = nested_folders(make_photos, tmp_path)
    with Engine(model="classic") as engine:
        for folder in (child, parent) if child_first else (parent, child):
            engine.ingest(folder)
        inside[1].unlink()
        (child / "broken.jpg").unlink()
        report = engine.ingest(parent)
        assert (report.removed, report.unchanged, len(report.failed)) == (1, 5, 1)
        assert engine.meta.content_id_for_path(inside[1]) is None
        assert [path for path, _ in engine.meta.failures()] == [str(parent / "broken.jpg")]
        assert {h.path for h in engine.search_image(inside[0], k=20)} == {
            str(p) for p in outside + inside
        } - {str(inside[1])}


def test_ingesting_the_sub_folder_again_prunes_nothing_outside_it(make_photos, tmp_path):
    parent, child, outside, inside = nested_folders(make_photos, tmp_path)
    with Engine(model="classic") as engine:
        engine.ingest(child)
        engine.ingest(parent)
        outside[2].unlink()  # gone, but outside the sub-folder: only an ingest of the parent forgets it
        inside[2].unlink()
        report = engine.ingest(child)
        assert (report.removed, report.unchanged) == (1, 2)
        assert engine.meta.content_id_for_path(outside[2]) is not None
        assert engine.meta.content_id_for_path(inside[2]) is None
        assert len(engine.meta.failures()) == 2
        assert engine.ingest(parent).removed == 1
        assert engine.meta.counts()["files"] == 4
