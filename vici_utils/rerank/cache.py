"""An append-only store of every answer a model gave, so no request is ever paid for twice.

One JSON object per line, flushed and fsynced as each answer arrives: a killed run loses at most the
requests in flight, and a rerun (or a resumed run) finds every stored answer by its key. The key hashes
everything that determines the answer: backend, server (base URL without credentials), model, generation
settings, prompt text and image bytes; so answers of one server or model are never reused for another.
A line torn by a kill is skipped on reading, and the next write starts on a fresh line.

Every arrived answer is stored, unusable ones too (with their fault), for the record: only usable
answers are reused, so a rerun asks again for every request that has none. Transport failures (429, 5xx,
timeouts, bodies that are not the protocol) are not answers and are not stored.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from ..redaction import redact
from .prompt import Request


def request_key(settings: dict, request: Request) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(request.fingerprint().encode())
    return h.hexdigest()[:32]


class AnswerCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, list[dict]] = defaultdict(list)
        self.torn_lines = 0
        self._needs_newline = False
        if self.path.is_file():
            raw = self.path.read_bytes()
            self._needs_newline = bool(raw) and not raw.endswith(b"\n")
            for line in raw.splitlines():
                try:
                    record = json.loads(line)
                    self.records[record["key"]].append(record)
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1
        self._file = None

    def __len__(self) -> int:
        return sum(len(v) for v in self.records.values())

    def get(self, key: str) -> list[dict]:
        return self.records.get(key, [])

    def answer(self, key: str) -> dict | None:
        """The stored usable answer for `key`, if any."""
        return next((r for r in self.get(key) if r.get("ok")), None)

    def faults(self, key: str) -> list[dict]:
        return [r for r in self.get(key) if not r.get("ok")]

    def put(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if self._needs_newline:
                self._file.write("\n")
        # answers arrive redacted (backends.Reply); this catches anything else a record picked up
        self._file.write(redact(json.dumps(record, ensure_ascii=False)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[record["key"]].append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
