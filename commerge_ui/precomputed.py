"""Results on arrival: the page's default run of the demo, computed once and cached with what produced it.

A visitor who opens the page sees the story in seconds: the shift curves, scores and verdict of the run that
**Run** would start with the form as it opens. It is computed once (at start-up, in the background, by
`python app.py`) and kept beside the demo's built models, under a key made of everything that decides it: the
config (models, samples, methods, options), the demo's build stamp and the package's version. A change to any of
them is a new key, so stale results are never shown; **Run** always recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .config import MergeConfig, config_to_yaml


def stamp_of(config: MergeConfig) -> str:
    """The state of what the config reads: each local model folder's and sample file's names, sizes and
    modification times (a rebuilt demo is a new stamp); a Hub id as written."""
    from .score_cache import folder_fingerprint

    parts = []
    for ref in [config.base, *(e.model for e in config.experts),
                *(p for e in config.experts for p in (e.calibration, e.evaluation) if p)]:
        path = Path(ref)
        if path.is_dir():
            parts.append(repr(folder_fingerprint(path)))
        elif path.is_file():
            parts.append(repr((str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)))
        else:
            parts.append(ref)
    return "\n".join(parts)


def folder_for(config: MergeConfig) -> Path:
    """Where a config's precomputed run is kept: beside its base when that is a local folder (the demo's
    built models), else the user's cache."""
    base = Path(config.base)
    if base.is_dir():
        return base.parent
    return Path(os.environ.get("COMMERGE_CACHE", Path.home() / ".cache" / "commerge_ui")) / "precomputed"


def key_of(config: MergeConfig, stamp: str) -> str:
    """What decides the run's results, hashed: the config as YAML, the demo's build stamp, the version."""
    text = "\n".join([config_to_yaml(config), stamp, __version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(folder: Path, config: MergeConfig, stamp: str) -> Path:
    return folder / f"precomputed-{key_of(config, stamp)}.json"


def load(folder: Path, config: MergeConfig, stamp: str) -> dict | None:
    """The cached report of this exact run (report.json's form), or None."""
    path = cache_path(folder, config, stamp)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def compute(folder: Path, config: MergeConfig, stamp: str, device: str = "auto",
            log: Callable[[str], None] = print) -> dict:
    """Run the config (no model saved) unless its result is cached; write the report atomically; return it."""
    cached = load(folder, config, stamp)
    if cached is not None:
        return cached
    from .api import run_merge

    log("precomputing the page's default run of the demo (results on arrival)")
    report = json.loads(run_merge(config, device=device, log=log).to_json())
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".precomputed-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    os.replace(partial, cache_path(folder, config, stamp))
    log("precomputed the default run")
    return report
