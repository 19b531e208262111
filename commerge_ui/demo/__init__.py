"""The offline demos: all-MiniLM-L6-v2 with six experts fine-tuned on real text (ready in seconds), and
SmolLM2-135M with five experts fine-tuned on real text domains (built on request: minutes on a CPU)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .build import DEMO_CONFIG, DEMO_DIR, ensure_demo, is_built
from .lm import LM_CONFIG, LM_MODELS, ensure_lm_demo, is_lm_built

if TYPE_CHECKING:
    from ..config import MergeConfig


@dataclass(frozen=True)
class Demo:
    key: str
    name: str
    config: Path
    models: Path  # where its built models live; a model under it is this demo's
    build_note: str  # how long building takes, in words
    is_built: Callable[[], bool]
    ensure: Callable[[Callable[[str], None]], object]  # builds unless built; takes a log callback

    @property
    def title(self) -> str:
        return f"{self.name} (built on first use: {self.build_note})"


DEMOS: dict[str, Demo] = {d.key: d for d in [
    Demo("text", "Text classifiers: all-MiniLM-L6-v2 + 6 experts on real text", DEMO_CONFIG, DEMO_DIR / "models",
         "seconds", is_built, lambda log: ensure_demo(log=log)),
    Demo("lm", "Language model: SmolLM2-135M + 5 experts on real text domains", LM_CONFIG, LM_MODELS,
         "8–25 min on 2 CPU cores, far less on a GPU", is_lm_built, lambda log: ensure_lm_demo(log=log)),
]}


def demo_of(ref: str | None) -> Demo | None:
    """The demo whose built models `ref` names (an absolute path under its models folder), if any."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute():
        return None
    path = Path(os.path.normpath(path))  # '..' folded, links kept: the LM demo's base links into the cache
    return next((d for d in DEMOS.values() if path.is_relative_to(d.models)), None)


def unbuilt_demos(config: MergeConfig) -> list[Demo]:
    """The demos whose models the config names and that still have to be built, once each."""
    refs = [config.base, *(e.model for e in config.experts)]
    found = {d.key: d for d in map(demo_of, refs) if d is not None and not d.is_built()}
    return list(found.values())


__all__ = ["DEMOS", "DEMO_CONFIG", "DEMO_DIR", "Demo", "demo_of", "ensure_demo", "is_built", "unbuilt_demos"]
