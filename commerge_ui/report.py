"""The run's report (README, "The command line"): scores, normalized scores, per-layer shift, time and memory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class MethodReport:
    scores: dict[str, float | None]
    normalized: dict[str, float | None]
    average_score: float | None
    average_normalized: float | None
    shift: dict[str, list[float]]  # task -> one value per entry of Report.layers
    block_shift: dict[str, list[float]]  # task -> one value per block output
    seconds: float  # the merge alone (statistics, solves, shift), not the scoring
    peak_memory_bytes: int
    warnings: list[str] = field(default_factory=list)
    merge_batch: int | None = None  # samples per forward if the statistics were micro-batched; None: one pass
    score_seconds: float | None = None  # scoring the merged model on every task's evaluation samples


@dataclass
class Report:
    family: str
    metric: str
    higher_is_better: bool
    base: dict  # {"model": ..., "scores": {task: score}}
    experts: dict[str, dict]  # task -> {"model": ..., "score": ...}
    layers: list[str]
    methods: dict[str, MethodReport]
    options: dict
    device: str
    dtype: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")


def mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def normalized(score: float | None, expert: float | None, higher_is_better: bool) -> float | None:
    """Merged score relative to the expert's: accuracy ratio, or expert/merged for a lower-is-better metric."""
    if score is None or expert is None:
        return None
    if higher_is_better:
        return score / expert if expert else None
    return expert / score if score else None

