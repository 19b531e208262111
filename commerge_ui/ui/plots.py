"""Plotly figures and tables built from a report (the dict form of report.json); no Gradio here."""

from __future__ import annotations

import plotly.graph_objects as go

from ..methods import METHODS
from ..report import in_percent, last_heldout, last_shift
from ..report import normalized as normalized_score

COLORS = {"com": "#e4572e", "com_chain": "#f3a712", "regmean": "#2e86ab", "regmean_plusplus": "#76b7b2",
          "task_arithmetic": "#59a14f", "ties": "#b07aa1", "dare": "#ff9da7", "dare_ties": "#9467bd",
          "tsv_m": "#8c564b", "iso_c": "#bcbd22", "iso_cts": "#17becf", "average": "#9c9c9c", "base": "#bab0ab",
          "expert": "#4e4e4e"}  # one per method: no two curves share a colour
# Transparent backgrounds and a mid-grey font keep the figures readable in light and dark themes.
_LAYOUT = dict(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=dict(color="#888888"),
               margin=dict(l=60, r=20, t=50, b=50), hovermode="closest",
               legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
_GRID = dict(gridcolor="rgba(136,136,136,0.25)", zerolinecolor="rgba(136,136,136,0.4)")


def title_of(method: str) -> str:
    return METHODS[method].title if method in METHODS else method


def _block_ticks(layers: list[str]) -> tuple[list[int], list[str]]:
    """One x tick at the first layer group of each block ('encoder.layer.3.…' → 'block 3')."""
    ticks, texts, seen = [], [], set()
    for index, label in enumerate(layers):
        block = next((part for part in label.split(".") if part.isdigit()), None)
        if block is not None and block not in seen:
            seen.add(block)
            ticks.append(index)
            texts.append(f"block {block}")
    return ticks, texts


def shift_figure(report: dict, tasks: list[str] | None = None, show_mean: bool = True) -> go.Figure:
    """Covariate shift per layer group in network order: one line per method (mean over tasks), plus the
    chosen tasks' own lines, dotted."""
    layers = report["layers"]
    x = list(range(len(layers)))
    figure = go.Figure()
    for method, result in report["methods"].items():
        color, title = COLORS.get(method, None), title_of(method)
        per_task = result["shift"]
        if show_mean and per_task:
            mean = [sum(values[i] for values in per_task.values()) / len(per_task) for i in x]
            figure.add_trace(go.Scatter(
                x=x, y=mean, name=f"{title} (mean)", mode="lines+markers", line=dict(color=color, width=3),
                marker=dict(size=5), customdata=layers, legendgroup=method,
                hovertemplate=f"<b>{title}</b> mean<br>%{{customdata}}<br>shift %{{y:.4f}}<extra></extra>"))
        for task in tasks or []:
            if task in per_task:
                figure.add_trace(go.Scatter(
                    x=x, y=per_task[task], name=f"{title} · {task}", mode="lines",
                    line=dict(color=color, width=1.5, dash="dot"), customdata=layers, legendgroup=method,
                    hovertemplate=f"<b>{title}</b> · {task}<br>%{{customdata}}<br>shift %{{y:.4f}}<extra></extra>"))
    ticks, texts = _block_ticks(layers)
    figure.update_layout(title="Covariate shift of each layer's inputs, merged model vs expert", **_LAYOUT)
    figure.update_xaxes(title="layer group, in network order", tickvals=ticks, ticktext=texts, **_GRID)
    figure.update_yaxes(title="‖X̂ − X‖ / ‖X‖", rangemode="tozero", **_GRID)
    return figure


def heldout_figure(report: dict) -> go.Figure:
    """The shift of each block's output, on the calibration samples (solid) and on the held-out evaluation
    samples (dashed): one pair of lines per method, the mean over the tasks that have both. A merge that fits
    its calibration samples but not the task drifts apart here."""
    figure = go.Figure()
    for method, result in report["methods"].items():
        held = result.get("heldout_shift") or {}
        tasks = [t for t in held if held[t] and result["block_shift"].get(t)]
        if not tasks:
            continue
        color, title = COLORS.get(method, None), title_of(method)
        for key, kind, dash in (("block_shift", "calibration", "solid"), ("heldout_shift", "held-out", "dash")):
            blocks = range(len(result[key][tasks[0]]))
            mean = [sum(result[key][t][b] for t in tasks) / len(tasks) for b in blocks]
            figure.add_trace(go.Scatter(
                x=list(blocks), y=mean, name=f"{title} · {kind}", mode="lines+markers", legendgroup=method,
                line=dict(color=color, width=2.5 if kind == "held-out" else 1.5, dash=dash), marker=dict(size=4),
                hovertemplate=f"<b>{title}</b> · {kind}<br>block %{{x}} output<br>shift %{{y:.4f}}<extra></extra>"))
    if not figure.data:
        figure.add_annotation(text="not measured: no evaluation samples, or heldout_shift is off",
                              showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_layout(title="Shift of each block's output: calibration (solid) vs held-out samples (dashed)",
                         **_LAYOUT)
    figure.update_xaxes(title="block", **_GRID)
    figure.update_yaxes(title="‖Ĥ − H‖ / ‖H‖", rangemode="tozero", **_GRID)
    return figure


def shift_heatmap(report: dict, method: str) -> go.Figure:
    """Tasks × layer groups for one method, on a colour scale shared by every method of the report."""
    result = report["methods"][method]
    tasks = list(result["shift"])
    top = max((v for m in report["methods"].values() for values in m["shift"].values() for v in values),
              default=1.0)
    figure = go.Figure(go.Heatmap(
        z=[result["shift"][t] for t in tasks], y=tasks, x=list(range(len(report["layers"]))),
        customdata=[report["layers"]] * len(tasks), zmin=0.0, zmax=top or 1.0, colorscale="Viridis",
        colorbar=dict(title="shift"),
        hovertemplate="%{y}<br>%{customdata}<br>shift %{z:.4f}<extra></extra>"))
    ticks, texts = _block_ticks(report["layers"])
    figure.update_layout(title=f"{title_of(method)}: shift per task and layer group", **_LAYOUT)
    figure.update_xaxes(tickvals=ticks, ticktext=texts)
    return figure


def score_rows(report: dict, normalized: bool = False) -> tuple[list[str], list[list]]:
    """The scores table: header, then rows for the base, the experts and each method (raw or normalized)."""
    tasks = list(report["experts"])
    expert = {t: report["experts"][t]["score"] for t in tasks}
    higher = report["higher_is_better"]

    def cells(scores: dict[str, float | None]) -> list:
        values = [normalized_score(scores.get(t), expert[t], higher) if normalized else scores.get(t) for t in tasks]
        known = [v for v in values if v is not None]
        return [_round(v) for v in values] + [_round(sum(known) / len(known) if known else None)]

    rows = [["base", *cells(report["base"]["scores"])], ["experts", *cells(expert)]]
    rows += [[title_of(m), *cells(r["scores"])] for m, r in report["methods"].items()]
    return ["model", *tasks, "average"], rows


def score_table(report: dict, normalized: bool = False) -> tuple[list[str], list[list[str]]]:
    """score_rows as a reader wants them: accuracy (or normalized scores) in % with one decimal, perplexity as
    is; in each column the best merge marked '★ best'."""
    header, rows = score_rows(report, normalized)
    percent = normalized or in_percent(report)
    higher = normalized or report["higher_is_better"]
    merges = rows[2:]
    best = []
    for column in range(1, len(header)):
        values = [r[column] for r in merges if r[column] is not None]
        best.append((max if higher else min)(values) if len(values) > 1 else None)

    def cell(value: float | None, column: int, is_merge: bool) -> str:
        if value is None:
            return "n/a"
        text = f"{100 * value:.1f}" if percent else f"{value:.1f}"
        return f"{text} ★ best" if is_merge and value == best[column - 1] else text

    table = [[row[0], *(cell(v, c, k >= 2) for c, v in enumerate(row[1:], 1))] for k, row in enumerate(rows)]
    unit = "%" if percent else report["metric"]
    return [header[0], *(f"{h} ({unit})" for h in header[1:])], table


def score_bars(report: dict, normalized: bool = False) -> go.Figure:
    """Grouped bars: one group per task (and the average), one bar per model, on the table's scale (accuracy
    and normalized scores in %, perplexity as is)."""
    header, rows = score_rows(report, normalized)
    scale = 100 if normalized or in_percent(report) else 1
    keys = ["base", "expert", *report["methods"]]
    figure = go.Figure()
    for key, row in zip(keys, rows):
        figure.add_trace(go.Bar(
            x=header[1:], y=[None if v is None else scale * v for v in row[1:]], name=row[0],
            marker_color=COLORS.get(key), hovertemplate=f"<b>{row[0]}</b><br>%{{x}}: %{{y:.1f}}<extra></extra>"))
    what = ("normalized to each expert, %" if normalized else
            f"{report['metric']}, %" if scale == 100 else report["metric"])
    layout = {**_LAYOUT, "legend": dict(orientation="v", x=1.02, y=1, yanchor="top"),
              "margin": dict(_LAYOUT["margin"], r=160)}  # beside the bars, clear of the title
    figure.update_layout(title=f"Scores per task ({what})", barmode="group", **layout)
    figure.update_yaxes(rangemode="tozero", **_GRID)
    return figure


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def cost_rows(report: dict) -> tuple[list[str], list[list]]:
    """Wall time and peak memory per method, with the mean shift at the last layer group (calibration samples)
    and at the last block's output on the held-out samples."""
    rows = []
    for method, result in report["methods"].items():
        rows.append([title_of(method), round(result["seconds"], 2), round(result["peak_memory_bytes"] / 2**20, 1),
                     _round(last_shift(result)), _round(last_heldout(result)), len(result["warnings"])])
    return ["method", "seconds", "peak memory (MiB)", "shift at last layer", "held-out shift, last block",
            "warnings"], rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


def compare_figure(runs: list[tuple[str, dict]]) -> go.Figure:
    """Several runs' shift curves overlaid: the mean over tasks per method, a colour per method and a line
    style per run."""
    figure = go.Figure()
    for index, (label, report) in enumerate(runs):
        dash = _DASHES[index % len(_DASHES)]
        for method, result in report["methods"].items():
            per_task = [values for values in result["shift"].values() if values]
            if not per_task:
                continue
            mean = [sum(values[i] for values in per_task) / len(per_task) for i in range(len(per_task[0]))]
            name = f"{label.split(':')[0]} · {title_of(method)}"
            figure.add_trace(go.Scatter(
                x=list(range(len(mean))), y=mean, name=name, mode="lines", customdata=report["layers"],
                line=dict(color=COLORS.get(method), dash=dash, width=2.5),
                hovertemplate=f"<b>{name}</b><br>%{{customdata}}<br>shift %{{y:.4f}}<extra></extra>"))
    layout = {**_LAYOUT, "legend": dict(orientation="v", x=1.02, y=1, yanchor="top"),
              "margin": dict(_LAYOUT["margin"], r=220)}
    figure.update_layout(title="Covariate shift per layer, runs compared (mean over tasks)", **layout)
    figure.update_xaxes(title="layer group, in network order", **_GRID)
    figure.update_yaxes(title="‖X̂ − X‖ / ‖X‖", rangemode="tozero", **_GRID)
    return figure


def compare_rows(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list]]:
    """One row per run and method: average score (% or perplexity), last-layer shift, the last block's held-out
    shift, merge seconds."""
    rows = []
    for label, report in runs:
        percent = in_percent(report)
        for method, result in report["methods"].items():
            score = result["average_score"]
            rows.append([label, title_of(method),  # text, so that every cell shows its decimals ("75.0", not "75")
                         "" if score is None else f"{100 * score if percent else score:.1f}",
                         _text(last_shift(result)), _text(last_heldout(result)), f"{result['seconds']:.1f}"])
    return ["run", "method", "average score", "shift at last layer", "held-out shift, last block",
            "merge seconds"], rows
