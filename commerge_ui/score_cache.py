"""Scores of the unmerged models (each expert, and the base under each expert's head), kept per process.

They depend on the model files, the evaluation samples and how scoring runs, never on the merge. Without this,
every run re-scores them (a minute or more on a CPU): a page that runs the same experts again with another α
or method, or a study over calibration seeds, paid that each time. Keys carry each model folder's file sizes
and modification times, so a model changed on disk is scored again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from .samples import Sample

T = TypeVar("T")
_SCORES: dict[Hashable, object] = {}
MAX_ENTRIES = 512


def folder_fingerprint(folder: Path) -> tuple:
    """The model files' names, sizes and modification times (stat only, no reading)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    return (str(folder.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def samples_digest(samples: list[Sample]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(repr((s.text, s.label)).encode())
        digest.update(hashlib.sha256(s.image).digest() if s.image else b"-")
    return digest.hexdigest()


def cached_score(key: Hashable, compute: Callable[[], T]) -> T:
    if key not in _SCORES:
        if len(_SCORES) >= MAX_ENTRIES:
            _SCORES.pop(next(iter(_SCORES)))
        _SCORES[key] = compute()
    return _SCORES[key]  # type: ignore[return-value]


def clear() -> None:
    _SCORES.clear()
