"""The University-1652 reader on hand-built trees with the real data's quirks."""
from pathlib import Path

import pytest
from PIL import Image

from vici_utils.u1652 import DatasetError, University1652, load_image


def _img(path: Path, size=(8, 8), color=(120, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def make_tree(root: Path, train=("0001", "0002", "0003", "0004"), test=("0101", "0102"), distractors=("0201",)):
    for b in train:
        _img(root / f"train/satellite/{b}/{b}.jpg")
        _img(root / f"train/street/{b}/s1.jpg")
        _img(root / f"train/street/{b}/s2.jpeg")
        for i in (1, 2, 3):
            _img(root / f"train/drone/{b}/image-{i:02d}.jpeg")
    (root / "train/google/0001").mkdir(parents=True)  # empty on purpose, as 12 real folders are
    (root / "train/street/0999").mkdir(parents=True)  # an empty building folder
    for b in test:
        _img(root / f"test/query_street/{b}/q1.jpg")
        _img(root / f"test/query_street/{b}/q2.jpeg")
    for b in (*test, *distractors):
        _img(root / f"test/gallery_satellite/{b}/{b}.jpg")
    return root


def test_reads_layout_with_quirks(tmp_path):
    ds = University1652(make_tree(tmp_path))
    assert ds.train.buildings == ["0001", "0002", "0003", "0004"]
    assert [p.name for p in ds.train.street["0001"]] == ["s1.jpg", "s2.jpeg"]  # .jpg and .jpeg both read
    assert ds.train.street["0999"] == []
    assert [p.name for p in ds.train.drone["0002"]] == ["image-01.jpeg", "image-02.jpeg", "image-03.jpeg"]
    assert len(ds.test.queries) == 4 and len(ds.test.gallery) == 3  # distractor kept in the gallery
    assert ds.test.distractors == ["0201"]
    assert ds.test.queries[0].name == "0101/q1.jpg" and ds.test.gallery[0].name == "0101"
    assert ds.challenge is None
    assert ds.summary()["test distractor buildings"] == 1


def test_google_read_only_when_asked_and_empty_folders_tolerated(tmp_path):
    root = make_tree(tmp_path)
    assert University1652(root).train.google == {}
    assert University1652(root, include_google=True).train.google == {"0001": []}


def test_missing_split_names_the_path(tmp_path):
    root = make_tree(tmp_path)
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DatasetError, match=r"test: missing split folder"):
        University1652(root)


def test_missing_view_and_missing_root(tmp_path):
    root = make_tree(tmp_path / "d")
    for p in (root / "test/gallery_satellite").rglob("*.jpg"):
        p.unlink()
    with pytest.raises(DatasetError, match="gallery_satellite: no gallery images"):
        University1652(root)
    with pytest.raises(DatasetError, match="data root not found"):
        University1652(tmp_path / "nowhere")


def test_corrupt_jpeg_reports_its_path(tmp_path):
    root = make_tree(tmp_path)
    bad = root / "train/street/0001/s1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = University1652(root)
    with pytest.raises(DatasetError, match=str(bad).replace("/", ".")):
        load_image(ds.train.street["0001"][0])


def test_a_truncated_image_fails_where_it_is_decoded_with_its_path(tmp_path):
    """Pillow opens a truncated JPEG and fails only when it decodes: every reader of images still names the file."""
    from vici_utils.datasets import decode_image
    from vici_utils.rerank.prompt import image_bytes

    noise = Image.effect_noise((96, 96), 60).convert("RGB")  # noise: most of the file is scan data, past the header
    noise.save(tmp_path / "whole.jpg", format="JPEG")
    data = (tmp_path / "whole.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:len(data) * 3 // 4])
    with Image.open(cut) as im:
        assert im.format == "JPEG"  # opening alone succeeds
    for read in (load_image, lambda p: decode_image(p, 16), lambda p: image_bytes(str(p), 32)):
        with pytest.raises(DatasetError, match=r"cut\.jpg: cannot read this image"):
            read(cut)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    ds = University1652(make_tree(tmp_path, train=[f"{i:04d}" for i in range(20)]))
    a_train, a_val = ds.split_buildings(0.2, seed=1)
    b_train, b_val = ds.split_buildings(0.2, seed=1)
    assert (a_train, a_val) == (b_train, b_val)
    assert len(a_val) == 4 and not set(a_train) & set(a_val)
    assert sorted(a_train + a_val) == ds.train.buildings
    assert ds.split_buildings(0.2, seed=2)[1] != a_val
    val = ds.val_set(a_val)
    assert {q.building for q in val.queries} == set(a_val) == {g.building for g in val.gallery}


def test_challenge_layout_keeps_listed_order(tmp_path):
    root = make_tree(tmp_path)
    names = ["zzzzzzzzzzzzzzzz.jpeg", "aaaaaaaaaaaaaaaa.jpeg"]
    for n in names:
        _img(root / "test/workshop_query_street" / n)
    _img(root / "test/workshop_gallery_satellite/bbbbbbbbbbbbbbbb.jpg")
    (root / "test/query_street_name.txt").write_text("\n".join(names) + "\n")
    ch = University1652(root).challenge
    assert [q.name for q in ch.queries] == names
    assert [g.name for g in ch.gallery] == ["bbbbbbbbbbbbbbbb"]
    (root / "test/query_street_name.txt").write_text("missing000000000.jpeg\n")
    with pytest.raises(DatasetError, match="not in .*workshop_query_street"):
        University1652(root)
