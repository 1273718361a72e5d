"""The University-1652 reader on hand-built trees with the real data's quirks."""
import io
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


# --- issue 22.3, 22.8, 22.12: every image mode, EXIF orientation, decompression bombs, gallery names ---------------

def _modes(tmp_path):
    """One file per mode Pillow opens, with the 8-bit RGB it must become (or None: refused by name)."""
    import numpy as np

    out = {}

    def save(name, image, expected, **kw):
        path = tmp_path / name
        image.save(path, **kw)
        out[name] = (path, expected)

    save("grey16.png", Image.fromarray(np.full((6, 5), 40000, np.uint16)), (156, 156, 156))  # 40000 / 257
    save("int32.tif", Image.fromarray(np.full((6, 5), 65535, np.int32)), (255, 255, 255))
    save("float.tif", Image.fromarray(np.full((6, 5), 0.5, np.float32)), None)
    save("la.png", Image.new("LA", (6, 5), (80, 0)), (255, 255, 255))            # transparent: white
    save("rgba.png", Image.new("RGBA", (6, 5), (10, 200, 30, 255)), (10, 200, 30))  # opaque: its colour
    pal = Image.new("P", (6, 5), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    save("p_transparent.png", pal, (255, 255, 255), transparency=1)
    save("p.png", pal, (200, 10, 10))
    save("cmyk.jpg", Image.new("CMYK", (6, 5), (0, 255, 255, 0)), (255, 0, 0))
    save("bilevel.png", Image.new("1", (6, 5), 1), (255, 255, 255))
    save("grey.png", Image.new("L", (6, 5), 77), (77, 77, 77))
    return out


def test_every_pixel_mode_becomes_the_right_8bit_rgb_or_is_refused_by_name(tmp_path):
    """A 16-bit PNG became all white (mean 255) in training, retrieval and the VLM's images."""
    import numpy as np

    from vici_utils.datasets import decode_image
    from vici_utils.rerank.prompt import image_bytes

    for name, (path, expected) in _modes(tmp_path).items():
        if expected is None:
            with pytest.raises(DatasetError, match=rf"{name}: pixel mode F .*convert the file to 8-bit RGB"):
                load_image(path)
            continue
        for image in (load_image(path), decode_image(path), Image.open(io.BytesIO(image_bytes(str(path), None).data)),
                      Image.open(io.BytesIO(image_bytes(str(path), 32).data))):
            assert image.mode in ("RGB", "L"), name  # L: a grey file sent as it is
            got = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
            assert np.allclose(got, expected, atol=3), (name, got, expected)


def test_exif_orientation_is_one_rule_for_the_model_and_the_vlm(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (turn 90 degrees clockwise): the model and the VLM both see it
    upright; the VLM is never sent the original (sideways) bytes."""
    import numpy as np

    from vici_utils.rerank.prompt import image_bytes

    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # red on the stored left half
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif, quality=95)
    model = load_image(path)
    assert model.size == (20, 40)  # upright: taller than wide, red on top
    assert np.asarray(model)[:10, :, 0].mean() > 200 and np.asarray(model)[-10:, :, 2].mean() > 200
    for size in (None, 384):
        sent = image_bytes(str(path), size)
        assert sent.data != path.read_bytes()
        assert Image.open(io.BytesIO(sent.data)).size == (20, 40)
    plain = tmp_path / "plain.jpg"
    stored.save(plain, quality=95)
    assert image_bytes(str(plain), None).data == plain.read_bytes()  # upright files still go as they are


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the pixels are never decoded: the header is the bomb)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_names_the_file_and_the_limit(tmp_path):
    from vici_utils.u1652 import sample_image_sizes

    bomb = _png_header(tmp_path / "huge.png", 20000, 20000)
    for read in (lambda: load_image(bomb), lambda: sample_image_sizes([bomb])):
        with pytest.raises(DatasetError, match=r"huge\.png: too large to open safely .*400000000 pixels.* limit is "
                                               r"Pillow's Image.MAX_IMAGE_PIXELS x 2 = 179 megapixels"):
            read()


def test_figures_get_thumbnails(tmp_path):
    """Figures draw `load_image(path, max_side=...)`: a big photo costs a figure a thumbnail, not its full size."""
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 1200), (1, 2, 3)).save(big)
    png = tmp_path / "big.png"
    Image.new("RGB", (3000, 1200), (1, 2, 3)).save(png)
    assert load_image(big, max_side=256).size == (256, 102)
    assert load_image(png, max_side=256).size == (256, 102)
    assert load_image(big).size == (3000, 1200)


def test_gallery_images_with_one_stem_in_two_buildings_are_refused_at_set_up(tmp_path):
    """Answer files name gallery images by stem: the clash used to surface after training, naming answer.txt."""
    root = make_tree(tmp_path / "u")
    _img(root / "test/gallery_satellite/0102/0101.jpg")  # the stem of building 0101's tile, in 0102's folder
    with pytest.raises(DatasetError, match=r"two gallery images share the name '0101'.*0101/0101\.jpg and "
                                           r".*0102/0101\.jpg; rename one"):
        University1652(root)


# --- issue 12: hidden files, a challenge without its list, empty gallery folders ------------------------------
def test_hidden_files_are_skipped_and_a_corrupt_image_names_its_path(tmp_path):
    """Issue 12 (8): the dataset reader's messages."""
    from vici_utils.u1652 import DatasetError, University1652, sample_image_sizes

    root = make_tree(tmp_path)
    (root / "train/street/0001/._s1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    (root / "train/street/.DS_Store").write_bytes(b"junk")
    (root / "train/street/._0002").mkdir()
    ds = University1652(root)
    assert [p.name for p in ds.train.street["0001"]] == ["s1.jpg", "s2.jpeg"]
    assert "._0002" not in ds.train.street
    bad = root / "train/street/0001/s1.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{bad}: cannot read this image"):
        sample_image_sizes([bad])


def test_challenge_without_its_list_warns_and_is_skipped(tmp_path):
    """Issue 12 (8): the dataset reader's messages."""
    from PIL import Image

    from vici_utils.u1652 import DatasetWarning, University1652

    root = make_tree(tmp_path)
    for d, name in (("workshop_query_street", "q.jpeg"), ("workshop_gallery_satellite", "g.jpg")):
        (root / "test" / d).mkdir()
        Image.new("RGB", (8, 8)).save(root / "test" / d / name)
    with pytest.warns(DatasetWarning, match=r"incomplete challenge layout, missing query_street_name\.txt .*skipped"):
        ds = University1652(root)
    assert ds.challenge is None and len(ds.test.queries) == 4


def test_queried_buildings_with_an_empty_gallery_folder_are_recorded_and_warned(tmp_path):
    """Issue 12 (8): the dataset reader's messages."""
    from vici_utils.u1652 import DatasetWarning, University1652

    root = make_tree(tmp_path)
    (root / "test/gallery_satellite/0102/0102.jpg").unlink()  # its folder stays, empty
    with pytest.warns(DatasetWarning, match=r"1 queried buildings have no gallery image \(0102\)") as caught:
        ds = University1652(root)
    assert ds.test.buildings_without_gallery == ["0102"]
    assert len([w for w in caught if issubclass(w.category, DatasetWarning)]) == 1
