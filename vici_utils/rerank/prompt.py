"""What a re-ranking request says and shows: the instructions (our own words) and the images.

A request is a list of parts, text and images interleaved, that every backend turns into its own
wire format: the ground photo first, then each satellite candidate under its number, then the task.
Images are the files' own bytes at full resolution (vlm_image_size: None, as VICI sent them, when those
bytes show what the retrieval model sees), or downscaled and re-encoded as JPEG (vlm_image_size: N, cheaper).
Numbering each image in the text beside it keeps "candidate 3" unambiguous whatever the model does
with image order.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..u1652 import load_image, open_image, orientation

PROMPT_VERSION = "2025-06-v2"  # part of every cache key: changing the wording invalidates stored answers
JPEG_QUALITY = 90
SENT_AS_IS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}  # formats every backend takes
PLAIN_MODES = {"RGB", "L"}  # a file's own bytes are what the model sees only in these modes, stored upright

INTRO = (
    "You are helping to find where a photograph was taken. The first image below was taken on the ground, "
    "at street level. After it come {k} satellite images, numbered 1 to {k}, each showing a place seen "
    "from directly above. Usually one of them shows the place of the ground photo."
)

TASK = (
    "Work in this order.\n"
    "1. Describe the ground photo: the buildings (shape, height, roof, facade colour), the road layout, "
    "open spaces, vegetation, water, and anything else a satellite could see.\n"
    "2. Compare the ground photo with each satellite image in turn: what matches, what contradicts.\n"
    "3. Rank all {k} satellite images from the most to the least likely to show the place of the ground "
    "photo. The ranking is a list of the {k} image numbers, each number exactly once, best first.\n"
    "4. Explain why your first choice is the best match.\n"
    "Answer with a JSON object only, no markdown, with these keys: ranking (step 3, a list of integers), "
    "summary_ground_image (step 1), summary_satellite_images (step 2, a list of {k} strings, one per "
    "satellite image), reason (step 4)."
)


@dataclass(frozen=True)
class ImagePart:
    data: bytes
    mime: str = "image/jpeg"


@dataclass
class Request:
    """One question to the model: query `query_index` with its candidates in one presented order."""
    query_index: int
    query_name: str
    permutation: int
    order: list[int]          # order[j] = retrieval position (0-based) of the candidate presented as j+1
    candidates: list[str]     # gallery names, as presented
    parts: list[str | ImagePart]  # text and images, interleaved, in the order the model sees them

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[bytes]:
        return [p.data for p in self.parts if isinstance(p, ImagePart)]

    def fingerprint(self) -> str:
        """Hash of everything the model sees (text and image bytes), in order."""
        h = hashlib.sha256()
        for p in self.parts:
            image = isinstance(p, ImagePart)
            h.update(b"I" if image else b"T")
            h.update(hashlib.sha256(p.data if image else p.encode()).digest())
        return h.hexdigest()


def image_digest(part: ImagePart) -> str:
    """An image's identity by content: the same bytes are uploaded once however many requests show them."""
    return hashlib.sha256(part.data).hexdigest()


def image_bytes(path: str, size: int | None) -> ImagePart:
    """The image at `path` as sent to the model: the pixels the retrieval model sees (u1652.load_image: upright by
    its EXIF orientation, 8-bit RGB). size None: the file's own bytes, unchanged, when they are those pixels (a
    JPEG, PNG or WebP in RGB or grey, with no EXIF turn); any other file is re-encoded as JPEG at full size. size
    N: downscaled so its longer side is at most N, re-encoded as JPEG; deterministic for a given Pillow version,
    so the bytes (and cache keys) are stable across runs. Large JPEGs are decoded at a reduced scale (draft) and
    resized bilinearly (Pillow's resize filters are area-aware when shrinking): this runs once per image per run
    and must keep up with the requests."""
    if size is None:
        with open_image(path) as im:
            fmt, as_is = im.format, im.format in SENT_AS_IS and im.mode in PLAIN_MODES
        if as_is:
            with open_image(path) as im:
                as_is = orientation(im) == 1  # reading the EXIF of a PNG decodes it: verify needs a fresh open
            with open_image(path) as im:
                im.verify()  # a truncated or corrupt file fails here, not at the server
        if as_is:
            return ImagePart(Path(path).read_bytes(), SENT_AS_IS[fmt])
    im = load_image(path, draft_size=size)
    scale = 1 if size is None else size / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return ImagePart(buf.getvalue())


class ImageEncoder:
    """image_bytes for a whole run, started ahead of the requests in a few threads (Pillow releases the GIL
    while it decodes, resizes and encodes), so a request rarely waits for its images.

    `plan` lists every image the run will ask for, in order; the encoder keeps up to `ahead` of them in
    progress, and forgets each image after its planned last use (a gallery image is shown many times but
    encoded once), so memory stays bounded on long runs."""

    def __init__(self, workers: int | None = None, ahead: int = 64):
        self.ahead = ahead
        self._pool = ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1), thread_name_prefix="jpeg")
        self._futures: dict[tuple[str, int | None], Future] = {}
        self._plan: deque = deque()
        self._uses: Counter = Counter()
        self._lock = threading.Lock()

    def plan(self, paths, size: int | None) -> None:
        keys = [(str(p), size) for p in paths]
        with self._lock:
            self._uses.update(keys)
            self._plan.extend(dict.fromkeys(keys))
            self._top_up()

    def _submit(self, key) -> None:
        self._futures[key] = self._pool.submit(image_bytes, *key)

    def _top_up(self) -> None:
        busy = sum(not f.done() for f in self._futures.values())
        while self._plan and busy < self.ahead:
            key = self._plan.popleft()
            if key not in self._futures:
                self._submit(key)
                busy += 1

    def encode(self, paths: list[str], size: int | None) -> list[ImagePart]:
        keys = [(str(p), size) for p in paths]
        with self._lock:
            for key in keys:
                if key not in self._futures:
                    self._submit(key)
            futures = [self._futures[key] for key in keys]
        images = [f.result() for f in futures]
        with self._lock:
            for key in keys:
                if key in self._uses:
                    self._uses[key] -= 1
                    if self._uses[key] <= 0:
                        del self._uses[key], self._futures[key]
            self._top_up()
        return images

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()


def build_request(query_index: int, query_name: str, query_path: str | Path, candidate_names: list[str],
                  candidate_paths: list[str | Path], order: list[int], permutation: int, image_size: int | None,
                  encoder: ImageEncoder) -> Request:
    """The request for one query: `candidate_*` in retrieval order, presented in `order`."""
    k = len(order)
    images = encoder.encode([query_path, *(candidate_paths[pos] for pos in order)], image_size)
    parts: list[str | ImagePart] = [INTRO.format(k=k), "Ground photo:", images[0]]
    for slot, image in enumerate(images[1:], start=1):
        parts += [f"Satellite image {slot}:", image]
    parts.append(TASK.format(k=k))
    return Request(query_index, query_name, permutation, list(order), [candidate_names[p] for p in order], parts)
