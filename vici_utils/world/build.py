"""Write an embedded world in the University-1652 layout, generated once and cached by its spec.

    <worlds_dir>/<key>/train/{street,satellite,drone}/<id>/...   train/google/<id>/ (empty, as in the data)
                       test/query_street/<id>/*.jpg  test/gallery_satellite/<id>/<id>.jpg
                       test/workshop_query_street/<16 chars>.jpeg  workshop_gallery_satellite/<16>.jpg
                       test/query_street_name.txt  test/challenge_ground_truth.csv
                       world.json  (spec, ids, per-view cameras: written last, marks a complete world)

Each location is seeded from (world seed, split, index) alone and writes only its own files, so the
bytes do not depend on how the pool schedules work; the world is built in a temporary folder and
renamed into place, so an interrupted build never leaves a complete-looking world.
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import progress
from .render import drone_cameras, photo_finish, render_satellite, render_view, street_cameras
from .scene import location_rngs, make_palette, make_scene

WORLD_VERSION = 2          # bump whenever the generator's output changes, so caches are rebuilt
JPEG_QUALITY = 90
MARKER = "world.json"


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    train_locations: int = 400
    test_locations: int = 150
    distractors: int = 50
    difficulty: float = 0.5
    challenge: bool = True
    sat_size: int = 128
    view_size: int = 96
    street_train: tuple = (4, 6)   # street images per train location (inclusive range)
    street_test: tuple = (3, 4)    # street queries per test location
    drone_train: tuple = (4, 6)    # drone images per train location
    empty_google: int = 2          # train buildings with an empty google/ folder, as in the real data
    sat_metres: float = 96.0       # ground covered by a satellite tile: the target and its neighbours
    supersample: float = 1.0       # rays per pixel side for drone/street (1 is 4x cheaper than 2)

    def __post_init__(self):
        total = self.train_locations + self.test_locations + self.distractors
        if self.train_locations < 1 or self.test_locations < 1 or self.distractors < 0 or total > 10000:
            raise ValueError(f"WorldSpec: need >= 1 train and test location, >= 0 distractors and at most "
                             f"10000 locations in all (4-digit ids); got {total}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"WorldSpec: difficulty must be in [0, 1], got {self.difficulty}")

    @classmethod
    def from_params(cls, params) -> "WorldSpec":
        return cls(seed=params.world_seed, train_locations=params.world_train_locations,
                   test_locations=params.world_test_locations, distractors=params.world_distractors,
                   difficulty=params.world_difficulty, challenge=params.world_challenge,
                   **({"drone_train": (params.world_drone_views,) * 2} if params.world_drone_views else {}))

    def key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, **asdict(self)}, sort_keys=True)
        return f"w{WORLD_VERSION}-" + hashlib.sha1(blob.encode()).hexdigest()[:12]

    def building_id(self, split: str, index: int) -> str:
        offset = {"train": 0, "test": self.train_locations,
                  "distractor": self.train_locations + self.test_locations}[split]
        return f"{offset + index:04d}"


def render_location(spec: WorldSpec, split: str, index: int, street: bool = True, drone: bool = True) -> dict:
    """One location's views as uint8 arrays: satellite (HxWx3), drone and street (lists), building id,
    and the cameras. Identical to what `ensure_world` writes (before JPEG)."""
    rngs = location_rngs(spec.seed, split, index)
    scene = make_scene(rngs["scene"], make_palette(spec.seed), spec.difficulty)
    photo = rngs["photo"]
    out = {"building": spec.building_id(split, index), "satellite":
           photo_finish(render_satellite(scene, spec.sat_size, spec.sat_metres), photo, spec.difficulty),
           "street": [], "drone": [], "cameras": {"street": [], "drone": []}, "scene": scene.meta}
    if split == "distractor":
        return out
    if street:
        lo, hi = spec.street_train if split == "train" else spec.street_test
        cams = street_cameras(scene, rngs["street"], int(rngs["street"].integers(lo, hi + 1)),
                              spec.difficulty)
        views = [render_view(scene, c, spec.view_size, spec.supersample) for c in cams]
        out["street"] = [photo_finish(v, photo, spec.difficulty) for v in views]
        out["cameras"]["street"] = cams
    if drone and split == "train":
        cams = drone_cameras(scene, rngs["drone"], int(rngs["drone"].integers(spec.drone_train[0],
                                                                            spec.drone_train[1] + 1)))
        out["drone"] = [photo_finish(render_view(scene, c, spec.view_size, spec.supersample), rngs["drone"],
                                     spec.difficulty)
                        for c in cams]
        out["cameras"]["drone"] = cams
    return out


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _round(cam: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cam.items()}


def _build_location(job) -> dict:
    """Render one location and write its files under `tmp`; returns its metadata for world.json."""
    spec, tmp, split, index = job
    tmp = Path(tmp)
    loc = render_location(spec, split, index)
    bid = loc["building"]
    sat_dir = "train/satellite" if split == "train" else "test/gallery_satellite"
    _write(tmp / sat_dir / bid / f"{bid}.jpg", _jpeg(loc["satellite"]))
    meta = {"split": split, "index": index, "satellite": f"{sat_dir}/{bid}/{bid}.jpg",
            "street": [], "drone": [], **{k: round(v, 3) if isinstance(v, float) else v
                                          for k, v in loc["scene"].items()}}
    street_dir = "train/street" if split == "train" else "test/query_street"
    for k, (img, cam) in enumerate(zip(loc["street"], loc["cameras"]["street"]), 1):
        rel = f"{street_dir}/{bid}/street-{k:02d}.jpg"
        _write(tmp / rel, _jpeg(img))
        meta["street"].append({"file": rel, **_round(cam)})
    for k, (img, cam) in enumerate(zip(loc["drone"], loc["cameras"]["drone"]), 1):
        rel = f"train/drone/{bid}/image-{k:02d}.jpeg"
        _write(tmp / rel, _jpeg(img))
        meta["drone"].append({"file": rel, **_round(cam)})
    return {bid: meta}


def _masked_names(rng: np.random.Generator, count: int, taken: set) -> list[str]:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    names = []
    while len(names) < count:
        name = "".join(alphabet[rng.integers(0, alphabet.size, 16)])
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _write_challenge(spec: WorldSpec, tmp: Path, locations: dict) -> None:
    """Masked-name copies of the test queries and gallery, the submission order and our ground truth."""
    rng = np.random.default_rng([spec.seed, 424242])
    test = tmp / "test"
    queries = [(m["street"], bid) for bid, m in locations.items() if m["split"] == "test"]
    queries = [(q["file"], bid) for qs, bid in queries for q in qs]
    gallery = [(m["satellite"], bid) for bid, m in locations.items() if m["split"] != "train"]
    taken: set = set()
    qnames, gnames = _masked_names(rng, len(queries), taken), _masked_names(rng, len(gallery), taken)
    (test / "workshop_query_street").mkdir(parents=True)
    (test / "workshop_gallery_satellite").mkdir(parents=True)
    gallery_of = {}
    for (rel, bid), name in zip(gallery, gnames):
        shutil.copyfile(tmp / rel, test / "workshop_gallery_satellite" / f"{name}.jpg")
        gallery_of[bid] = name
    listed = []
    for (rel, bid), name in zip(queries, qnames):
        shutil.copyfile(tmp / rel, test / "workshop_query_street" / f"{name}.jpeg")
        listed.append((f"{name}.jpeg", gallery_of[bid]))
    listed = [listed[i] for i in rng.permutation(len(listed))]
    (test / "query_street_name.txt").write_text("".join(f"{q}\n" for q, _ in listed))
    with open(test / "challenge_ground_truth.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["query_name", "gallery_name"])
        w.writerows(listed)


def _worker_init(parent: int) -> None:
    """Pool worker set-up. Ctrl-C is the parent's to handle (it terminates the pool), so a worker does not print
    its own traceback; and a worker ends with its parent, even one killed by SIGKILL, instead of rendering on as
    an orphan (~125 MB each)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _kill_with_parent():
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _kill_with_parent() -> bool:
    """Linux: ask the kernel for SIGKILL when the parent (the thread that forked us) ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL)) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _exit_with_parent(parent: int) -> None:
    """Elsewhere: poll; a process whose parent died is re-parented, so its parent pid changes."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _progress(total: int, enabled: bool):
    return progress(total=total, desc="embedded world", unit="loc", disable=not enabled)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(base: Path, key: str) -> None:
    """Remove temporary folders of builds whose process is gone (interrupted or killed)."""
    for p in base.glob(f".{key}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def ensure_world(spec: WorldSpec, root: str | os.PathLike | None = None, workers: int = 2,
                 progress: bool = True) -> Path:
    """The world's root folder, generating it first if this spec has not been built yet."""
    if root is None:
        from ..paths import worlds_dir

        base = worlds_dir()
        final = base / spec.key()
    else:
        final = Path(root).expanduser().resolve()
        base = final.parent
    if (final / MARKER).is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    _clean_stale(base, final.name)
    tmp = base / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _generate(spec, tmp, workers, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():   # not another builder winning the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _generate(spec: WorldSpec, tmp: Path, workers: int, show: bool) -> None:
    jobs = ([("train", i) for i in range(spec.train_locations)]
            + [("test", i) for i in range(spec.test_locations)]
            + [("distractor", i) for i in range(spec.distractors)])
    args = [(spec, str(tmp), split, i) for split, i in jobs]
    locations: dict = {}
    bar = _progress(len(args), show)
    try:
        if workers <= 1:
            for a in args:
                locations.update(_build_location(a))
                bar.update()
        else:
            ctx = get_context("fork") if hasattr(os, "fork") else get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
                for meta in pool.imap(_build_location, args, chunksize=4):
                    locations.update(meta)
                    bar.update()
    finally:
        bar.close()
    # Test-time folders that can exist empty (a split with no queries still has its folder).
    for d in ("train/street", "train/satellite", "train/drone", "test/query_street",
              "test/gallery_satellite"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, 1652])
    train_ids = [spec.building_id("train", i) for i in range(spec.train_locations)]
    for i in sorted(rng.choice(len(train_ids), min(spec.empty_google, len(train_ids)), replace=False)):
        (tmp / "train" / "google" / train_ids[i]).mkdir(parents=True)
    if spec.challenge:
        _write_challenge(spec, tmp, locations)
    world = {"world_version": WORLD_VERSION, "key": spec.key(), "spec": asdict(spec),
             "train": train_ids,
             "test": [spec.building_id("test", i) for i in range(spec.test_locations)],
             "distractors": [spec.building_id("distractor", i) for i in range(spec.distractors)],
             "locations": locations}
    (tmp / MARKER).write_text(json.dumps(world, indent=1, sort_keys=True))
