"""What a re-ranking request says and shows: the instructions (our own words) and the images, downscaled.

A request is a list of parts, text and JPEG bytes interleaved, that every backend turns into its own
wire format: the ground photo first, then each satellite candidate under its number, then the task.
Numbering each image in the text beside it keeps "candidate 3" unambiguous whatever the model does
with image order.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..u1652 import load_image

PROMPT_VERSION = "2025-06-v1"  # part of every cache key: changing the wording invalidates stored answers
JPEG_QUALITY = 90

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
    "Answer with a JSON object only, no markdown, with these keys: summary_ground_image (step 1), "
    "summary_satellite_images (step 2), ranking (step 3, a list of integers), reason (step 4)."
)


@dataclass
class Request:
    """One question to the model: query `query_index` with its candidates in one presented order."""
    query_index: int
    query_name: str
    permutation: int
    order: list[int]          # order[j] = retrieval position (0-based) of the candidate presented as j+1
    candidates: list[str]     # gallery names, as presented
    parts: list[str | bytes]  # text and JPEG bytes, interleaved, in the order the model sees them

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[bytes]:
        return [p for p in self.parts if isinstance(p, bytes)]

    def fingerprint(self) -> str:
        """Hash of everything the model sees (text and image bytes), in order."""
        h = hashlib.sha256()
        for p in self.parts:
            h.update(b"I" if isinstance(p, bytes) else b"T")
            h.update(hashlib.sha256(p if isinstance(p, bytes) else p.encode()).digest())
        return h.hexdigest()


@lru_cache(maxsize=4096)
def jpeg_bytes(path: str, size: int) -> bytes:
    """The image at `path`, downscaled so its longer side is at most `size`, re-encoded as JPEG.
    Deterministic for a given Pillow version, so the bytes (and cache keys) are stable across runs."""
    im = load_image(path)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def build_request(query_index: int, query_name: str, query_path: str | Path, candidate_names: list[str],
                  candidate_paths: list[str | Path], order: list[int], permutation: int, image_size: int) -> Request:
    """The request for one query: `candidate_*` in retrieval order, presented in `order`."""
    k = len(order)
    parts: list[str | bytes] = [INTRO.format(k=k), "Ground photo:", jpeg_bytes(str(query_path), image_size)]
    for slot, pos in enumerate(order, start=1):
        parts += [f"Satellite image {slot}:", jpeg_bytes(str(candidate_paths[pos]), image_size)]
    parts.append(TASK.format(k=k))
    return Request(query_index, query_name, permutation, list(order), [candidate_names[p] for p in order], parts)
