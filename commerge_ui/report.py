"""The run's report (docs/cli.md): scores, normalized scores, per-layer shift, time and memory."""

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
    heldout_shift: dict[str, list[float]] = field(default_factory=dict)  # task -> per block output, on its
    # evaluation samples (heldout.py); empty when not measured
    heldout_seconds: float | None = None  # measuring it


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
    offload: bool = False  # the blocks and the streams were kept on the host, one block at a time on the device
    partial: bool = False  # cancelled: only the methods that finished are here

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


def in_percent(report: dict) -> bool:
    """Whether the report's scores read as percentages (accuracy), not as they are (perplexity)."""
    return report["metric"] != "perplexity"


def last_shift(method: dict) -> float | None:
    """A method's shift at the last layer group, mean over the tasks that have one (report.json form)."""
    return mean([values[-1] for values in method["shift"].values() if values])


IN_SAMPLE = 1.5  # a held-out shift above this multiple of the calibration one is called out in the verdict


def mean_shift(method: dict) -> float | None:
    """A method's shift over the whole curve: the mean over layer groups, mean over tasks."""
    return mean([sum(values) / len(values) for values in method["shift"].values() if values])


def worst_shift(method: dict) -> float | None:
    """The largest of a method's mean-over-tasks shifts over its layer groups."""
    curves = [values for values in method["shift"].values() if values]
    if not curves:
        return None
    return max(sum(column) / len(column) for column in zip(*curves))


def last_block_shift(method: dict) -> float | None:
    """The shift at the last block's output on the calibration samples (where the held-out one is measured);
    the last layer group's where the report has no block shifts."""
    blocks = mean([values[-1] for values in (method.get("block_shift") or {}).values() if values])
    return blocks if blocks is not None else last_shift(method)


def last_heldout(method: dict) -> float | None:
    """A method's held-out shift at the last block's output, mean over the tasks measured (report.json form)."""
    return mean([values[-1] for values in method.get("heldout_shift", {}).values() if values])


def verdict(report: dict, titles: dict[str, str] | None = None) -> str:
    """One line a reader can take away from a run (the dict form of report.json): the best merge by average
    score against the experts, CoM's last-layer shift against the other regression merges' (on the calibration
    samples, and at the last block's output on the held-out samples where measured), and the worst merge.
    """
    titles = titles or {}

    def name(method: str) -> str:
        return titles.get(method, method)

    percent = in_percent(report)
    better = max if report["higher_is_better"] else min

    def fmt(value: float) -> str:
        return f"{100 * value:.1f} %" if percent else f"{value:.1f}"

    averages = {m: r["average_score"] for m, r in report["methods"].items() if r["average_score"] is not None}
    experts = mean([e["score"] for e in report["experts"].values()])
    parts = []
    if averages:
        best = better(averages, key=averages.__getitem__)
        metric = f"average {report['metric']}" if percent else f"mean {report['metric']}"
        parts.append(f"best {metric}: {name(best)} {fmt(averages[best])}"
                     + (f" (experts {fmt(experts)})" if experts is not None else ""))
    last = {m: last_shift(r) for m, r in report["methods"].items() if any(r["shift"].values())}
    rivals = [m for m in ("regmean", "regmean_plusplus") if m in last]
    if "com" in last and rivals:
        shifts = " / ".join(f"{name(m)} {last[m]:.3f}" for m in rivals)
        ratio = last[rivals[0]] / last["com"] if last["com"] else float("inf")
        parts.append(f"last-layer shift: {name('com')} {last['com']:.3f} vs {shifts} " + _times(ratio, name(rivals[0])))
        whole = {m: mean_shift(report["methods"][m]) for m in ("com", *rivals)}
        ratio = whole[rivals[0]] / whole["com"] if whole["com"] else float("inf")
        worst = {m: worst_shift(report["methods"][m]) for m in ("com", *rivals)}
        parts.append(f"mean over layers: {name('com')} {whole['com']:.3f} vs "
                     + " / ".join(f"{name(m)} {whole[m]:.3f}" for m in rivals) + " " + _times(ratio, name(rivals[0]))
                     + f", worst layer {name('com')} {worst['com']:.3f} vs {name(rivals[0])} {worst[rivals[0]]:.3f}")
    held = {m: last_heldout(r) for m, r in report["methods"].items()}
    rivals = [m for m in ("regmean", "regmean_plusplus") if held.get(m) is not None]
    if held.get("com") is not None and rivals:
        shifts = " / ".join(f"{name(m)} {held[m]:.3f}" for m in rivals)
        ratio = held[rivals[0]] / held["com"] if held["com"] else float("inf")
        parts.append(f"held-out shift (last block): {name('com')} {held['com']:.3f} vs {shifts} "
                     + _times(ratio, name(rivals[0])))
    for method, result in report["methods"].items():  # where the calibration curve flatters a merge, say so
        calibration = last_block_shift(result)
        if held.get(method) is not None and calibration and held[method] > IN_SAMPLE * calibration:
            parts.append(f"{name(method)}'s held-out shift is {held[method] / calibration:.1f}× its calibration "
                         "one at the last block: its calibration curve overstates the match")
    worse = min if report["higher_is_better"] else max
    if len(set(averages.values())) > 1 and experts is not None:
        worst = worse(averages, key=averages.__getitem__)
        gap = (experts - averages[worst]) * 100 if percent else averages[worst] - experts
        parts.append(f"worst: {name(worst)} {fmt(averages[worst])}, "
                     + (f"{gap:.1f} points below the experts" if percent else f"{gap:+.1f} perplexity vs the experts"))
    return " · ".join(parts)


def _times(ratio: float, rival: str) -> str:
    """'(2.8× lower than RegMean)' for a ratio rival/CoM of 2.8, '(1.4× higher …)' for 0.71."""
    return f"({ratio:.1f}× lower than {rival})" if ratio >= 1 else f"({1 / ratio:.1f}× higher than {rival})"
