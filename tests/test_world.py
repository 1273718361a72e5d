"""The embedded world: determinism, University-1652 layout, drone order, caching, atomic builds, and a
guard that no global colour gives a location away."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vici_utils.params import Params
from vici_utils.paths import REPO_ROOT
from vici_utils.provenance import describe_data
from vici_utils.world import WorldSpec, ensure_world, render_location
from vici_utils.world import build as world_build

TINY = dict(train_locations=6, test_locations=4, distractors=2)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return ensure_world(WorldSpec(**TINY), root=tmp_path_factory.mktemp("w") / "tiny", progress=False)


def test_same_spec_is_byte_identical_whatever_the_scheduling(tiny, tmp_path):
    again = ensure_world(WorldSpec(**TINY), root=tmp_path / "again", workers=1, progress=False)
    assert file_hashes(tiny) == file_hashes(again)


def test_different_seed_gives_different_files(tiny, tmp_path):
    other = ensure_world(WorldSpec(seed=1, **TINY), root=tmp_path / "other", progress=False)
    a, b = file_hashes(tiny), file_hashes(other)
    images = [k for k in a if k.endswith((".jpg", ".jpeg")) and "workshop" not in k]
    assert images and all(a[k] != b.get(k) for k in images)


def test_university1652_layout(tiny):
    spec = WorldSpec(**TINY)
    ids = lambda rel: sorted(p.name for p in (tiny / rel).iterdir())
    train = ids("train/satellite")
    tests, gallery = ids("test/query_street"), ids("test/gallery_satellite")
    assert train == [f"{i:04d}" for i in range(6)]
    assert tests == [f"{i:04d}" for i in range(6, 10)]
    assert gallery == [f"{i:04d}" for i in range(6, 12)]          # test buildings + 2 distractors
    assert not set(train) & set(gallery)
    assert ids("train/street") == train and ids("train/drone") == train
    distractors = set(gallery) - set(tests)
    assert len(distractors) == 2 and not distractors & set(ids("test/query_street"))
    for b in train:
        assert [p.name for p in (tiny / "train/satellite" / b).iterdir()] == [f"{b}.jpg"]
        streets = list((tiny / "train/street" / b).iterdir())
        drones = list((tiny / "train/drone" / b).iterdir())
        assert spec.street_train[0] <= len(streets) <= spec.street_train[1]
        assert all(p.suffix == ".jpg" for p in streets)
        assert spec.drone_train[0] <= len(drones) <= spec.drone_train[1]
        assert all(re.fullmatch(r"image-\d\d\.jpeg", p.name) for p in drones)
    for b in tests:
        n_queries = len(list((tiny / "test/query_street" / b).iterdir()))
        assert spec.street_test[0] <= n_queries <= spec.street_test[1]
    google = list((tiny / "train/google").iterdir())
    assert google and all(g.is_dir() and not any(g.iterdir()) for g in google)   # empty, as in the data
    with Image.open(tiny / "train/satellite/0000/0000.jpg") as im:
        assert im.size == (spec.sat_size, spec.sat_size)
    with Image.open(next((tiny / "train/street/0000").iterdir())) as im:
        assert im.size == (spec.view_size, spec.view_size)


def test_challenge_files_names_and_ground_truth(tiny):
    test = tiny / "test"
    listed = (test / "query_street_name.txt").read_text().split()
    files = sorted(p.name for p in (test / "workshop_query_street").iterdir())
    gallery = sorted(p.name for p in (test / "workshop_gallery_satellite").iterdir())
    assert sorted(listed) == files and listed != files       # every query listed once, in shuffled order
    assert all(re.fullmatch(r"[a-z0-9]{16}\.jpeg", n) for n in listed)
    assert all(re.fullmatch(r"[a-z0-9]{16}\.jpg", n) for n in gallery)
    n_queries = sum(len(list(d.iterdir())) for d in (test / "query_street").iterdir())
    assert len(listed) == n_queries and len(gallery) == 6
    with open(test / "challenge_ground_truth.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["query_name"] for r in rows] == listed
    # The masked copies are the test images: match them back by content.
    by_bytes = {p.read_bytes(): p.parent.name for p in (test / "gallery_satellite").rglob("*.jpg")}
    query_of = {p.read_bytes(): p.parent.name for p in (test / "query_street").rglob("*.jpg")}
    for r in rows:
        q = query_of[(test / "workshop_query_street" / r["query_name"]).read_bytes()]
        g = by_bytes[(test / "workshop_gallery_satellite" / f"{r['gallery_name']}.jpg").read_bytes()]
        assert q == g


def test_drone_sequence_descends_and_metadata(tiny):
    world = json.loads((tiny / "world.json").read_text())
    assert world["train"] == [f"{i:04d}" for i in range(6)]
    for b in world["train"]:
        drone = world["locations"][b]["drone"]
        assert [d["file"] for d in drone] == sorted(d["file"] for d in drone)
        alt = [d["altitude"] for d in drone]
        assert all(a > b_ for a, b_ in zip(alt, alt[1:])), alt
        assert all(-60.01 <= d["pitch"] <= -44.99 for d in drone)
        street = world["locations"][b]["street"]
        assert all(1.7 <= s["z"] <= 2.5 and 80 <= s["fov"] <= 100 for s in street)


def test_university1652_drone_count_changes_the_drone_views_only(tiny, tmp_path):
    """world_drone_views: 54 gives University-1652's count on an orbit of three turns, and leaves every street
    photo and tile as they were (separate random streams), so runs that never draw a drone are unchanged."""
    spec = WorldSpec.from_params(Params(world_train_locations=6, world_test_locations=4, world_distractors=2,
                                        world_drone_views=54))
    assert spec.drone_train == (54, 54) and spec.key() != WorldSpec(**TINY).key()
    assert describe_data(Params(world_drone_views=54)).endswith("difficulty 0.5, 54 drone views per building)")
    assert "drone views" not in describe_data(Params())  # every figure says which world it came from
    loc = render_location(spec, "train", 2)
    base = render_location(WorldSpec(**TINY), "train", 2)
    assert len(loc["drone"]) == 54 and len(base["drone"]) in range(4, 7)
    assert np.array_equal(loc["satellite"], base["satellite"])
    assert all(np.array_equal(a, b) for a, b in zip(loc["street"], base["street"], strict=True))
    alt = [c["altitude"] for c in loc["cameras"]["drone"]]
    assert all(a > b for a, b in zip(alt, alt[1:]))
    headings = np.radians([c["heading"] for c in loc["cameras"]["drone"]])
    sectors = np.histogram(np.degrees(headings) % 360, bins=8, range=(0, 360))[0]
    assert sectors.min() >= 2, sectors  # seen from every side


def test_render_location_matches_the_written_world(tiny):
    loc = render_location(WorldSpec(**TINY), "train", 2)
    assert loc["building"] == "0002" and loc["satellite"].shape == (128, 128, 3)
    assert loc["satellite"].dtype == np.uint8
    assert all(v.shape == (96, 96, 3) for v in loc["street"] + loc["drone"])
    assert len(loc["drone"]) == len(list((tiny / "train/drone/0002").iterdir()))
    assert (tiny / "train/satellite/0002/0002.jpg").read_bytes() == world_build._jpeg(loc["satellite"])
    assert (tiny / "train/drone/0002/image-01.jpeg").read_bytes() == world_build._jpeg(loc["drone"][0])


def test_spec_from_params_and_key():
    p = Params(world_seed=3, world_train_locations=10, world_test_locations=5, world_distractors=1,
               world_difficulty=0.25, world_challenge=False)
    spec = WorldSpec.from_params(p)
    assert (spec.seed, spec.train_locations, spec.test_locations, spec.distractors, spec.difficulty,
            spec.challenge) == (3, 10, 5, 1, 0.25, False)
    assert spec.key() == WorldSpec.from_params(p).key() != WorldSpec.from_params(Params()).key()
    d = WorldSpec.from_params(Params())
    assert (d.train_locations, d.test_locations, d.distractors) == (400, 150, 50)


def test_cache_hit_does_not_regenerate(tmp_path, monkeypatch):
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path))
    spec = WorldSpec(train_locations=2, test_locations=2, distractors=0)
    root = ensure_world(spec, progress=False)
    assert root == tmp_path / "worlds" / spec.key() and (root / "world.json").is_file()
    before = file_hashes(root)

    def boom(*a, **k):
        raise AssertionError("regenerated a cached world")

    monkeypatch.setattr(world_build, "_generate", boom)
    assert ensure_world(spec, progress=False) == root
    assert file_hashes(root) == before


def test_interrupted_build_leaves_no_complete_looking_world(tmp_path, monkeypatch):
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path))
    spec = WorldSpec(train_locations=2, test_locations=2, distractors=1)

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(world_build, "_write_challenge", fail)   # dies after every image was written
    with pytest.raises(KeyboardInterrupt):
        ensure_world(spec, workers=1, progress=False)
    worlds = tmp_path / "worlds"
    assert not (worlds / spec.key()).exists() and not list(worlds.iterdir())
    # A build killed outright leaves its temporary folder behind: ignored, then cleaned.
    stale = worlds / f".{spec.key()}.tmp-999999999"
    (stale / "train").mkdir(parents=True)
    monkeypatch.undo()
    monkeypatch.setenv("VICI_OUTPUTS", str(tmp_path))
    root = ensure_world(spec, workers=1, progress=False)
    assert (root / "world.json").is_file() and not stale.exists()


def colour_histogram(img: np.ndarray, bins: int = 8) -> np.ndarray:
    q = (img.reshape(-1, 3).astype(np.int64) * bins) // 256
    h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3).astype(np.float64)
    return np.sqrt(h / h.sum())      # Hellinger: nearest neighbour by Bhattacharyya similarity


def test_colour_histogram_baseline_is_weak():
    """Street histogram -> nearest satellite histogram over 100 locations must stay far from solving the
    task: a location must not be recognisable by one global colour."""
    spec = WorldSpec()
    streets, sats = [], []
    for i in range(100):
        loc = render_location(spec, "test", i, drone=False)
        streets.append(colour_histogram(loc["street"][0]))
        sats.append(colour_histogram(loc["satellite"]))
    sim = np.stack(streets) @ np.stack(sats).T
    r1 = float((sim.argmax(1) == np.arange(100)).mean())
    print(f"colour-histogram baseline R@1 on 100 locations: {100 * r1:.1f} % (chance 1 %)")
    assert r1 < 0.20


# --- issue 12: world workers die with their parent ----------------------------------------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_world_workers_die_with_a_killed_parent(tmp_path):
    """Issue 12 (7): world workers die with their parent."""
    code = ("import sys; from vici_utils.world import WorldSpec, ensure_world; "
            "ensure_world(WorldSpec(train_locations=40, test_locations=2, distractors=0, challenge=False, "
            "view_size=256, supersample=2.0), root=sys.argv[1], workers=2, progress=False)")
    # big views: a location takes over a second, so a worker that only noticed at its next result would live on
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "world")], cwd=REPO_ROOT)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the world generation did not start its 2 workers"
        time.sleep(0.5)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 2
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "pool workers outlived their killed parent"
    finally:
        for pid in workers:  # only if the test failed: leave no orphans behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
