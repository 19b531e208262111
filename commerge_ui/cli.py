"""`commerge merge CONFIG.yaml --out DIR`: exit 0 on success, 2 on bad input, 1 on other failures."""

from __future__ import annotations

import argparse
import json
import textwrap
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import Cancelled, InputError, MergeError
from .progress import PHASE_RUNNING, ProgressEvent
from .report import in_percent, last_heldout, last_shift, verdict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commerge", description="Merge fine-tuned experts with Chain of Merges.")
    parser.add_argument("--version", action="version", version=f"commerge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge the experts of a config and write a report")
    merge.add_argument("config", type=Path, help="the merge config (YAML)")
    merge.add_argument("--out", type=Path, required=True, help="output folder (written atomically)")
    merge.add_argument("--save", default=None,
                       help="methods whose merged model is saved, comma-separated (default: the first method)")
    merge.add_argument("--device", default="auto", help="auto | cpu | cuda")
    merge.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    merge.add_argument("--offload", default="auto", choices=["auto", "on", "off"],
                       help="keep the model's blocks and the calibration streams in host memory, one block at a "
                            "time on the GPU (auto: when the model would fill more than half of the GPU)")
    merge.add_argument("--force", action="store_true", help="replace an existing output folder")
    shown = merge.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the summary")
    shown.add_argument("--verbose", action="store_true", help="also print every layer group and stage")
    commands.add_parser("app", help="serve the app (python app.py: same options; see `commerge app --help`)",
                        add_help=False)
    convert = commands.add_parser("convert", help="rewrite a pickle-only checkpoint (pytorch_model.bin) as "
                                  "safetensors, loading it with weights_only (no code runs)")
    convert.add_argument("model", help="a local folder or a Hub id")
    convert.add_argument("--out", type=Path, required=True, help="the new folder (written atomically)")
    convert.add_argument("--revision", default=None, help="a Hub revision")
    convert.add_argument("--force", action="store_true", help="replace an existing output folder")
    merge.add_argument("--wide", action="store_true",
                       help="print the table at full width (default: it fits 100 columns, task names abbreviated)")
    merge.add_argument("--json", action="store_true",
                       help="print the report as JSON on stdout instead of the table (progress stays on stderr)")
    return parser


class ProgressPrinter:
    """Progress on stderr: a live bar per phase on a terminal, one line per finished phase (the references
    scored; per method, merge and scoring times), and with --verbose every layer group and stage as well."""

    def __init__(self, quiet: bool = False, verbose: bool = False, live: bool | None = None) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.live = sys.stderr.isatty() if live is None else live
        self.key: tuple[str, str] | None = None
        self.began = time.perf_counter()
        self.bar = None
        self.merge_seconds: dict[str, float] = {}
        self.pending: tuple[str, str] | None = None  # (method, its line): printed once its held-out shift is in

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.method, event.phase)
        if event.seconds is not None:
            self.merge_seconds[event.method] = event.seconds  # the report's clock, not this printer's
        if key != self.key:
            if self.pending and key != (self.pending[0], "shift"):
                self.flush()
            self._close()
            self.key, self.began = key, time.perf_counter()
            if not self.live and not event.ends_phase:  # in a file or a pipe: a line as each phase starts
                self._print(f"{_describe(event)}…")
            if self.live and not self.quiet:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total, desc=_describe(event), unit=_UNITS[event.phase], leave=False,
                                file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.total, self.bar.n = event.total or None, event.step
            self.bar.set_postfix_str((event.detail or event.label)[-40:], refresh=True)
        if self.verbose and event.phase == "merge" and event.step and not event.detail:
            elapsed = time.perf_counter() - self.began
            eta = elapsed / event.step * (event.total - event.step)
            self._print(f"  {event.method}: {event.step}/{event.total} {event.label} (eta {eta:.0f}s)")
        if event.ends_phase:
            self._finished(event, time.perf_counter() - self.began)

    def _finished(self, event: ProgressEvent, seconds: float) -> None:
        self._close()
        self.key = None
        if event.phase == "references" and event.total:
            self._print(f"scored the experts and the base ({event.total} models) in {seconds:.1f}s")
        elif event.phase == "merge":
            self.merge_seconds.setdefault(event.method, seconds)
        elif event.phase == "score":
            merged = self.merge_seconds.get(event.method, 0.0)
            scored = f", scored {event.total} tasks in {seconds:.1f}s" if event.total else ""
            self.pending = (event.method, f"{event.method}: merged in {merged:.1f}s{scored}")
        elif event.phase == "shift" and self.pending:
            self.pending = (self.pending[0], f"{self.pending[1]}, held-out shift in {seconds:.1f}s")
            self.flush()
        elif event.phase == "save" and self.verbose:
            self._print(f"{event.method}: saved in {seconds:.1f}s")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _print(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.clear()
        print(message, file=sys.stderr, flush=True)

    def flush(self) -> None:
        """The last scored method's line, if not printed yet (the run ended, or the next method began)."""
        if self.pending:
            self._print(self.pending[1])
            self.pending = None

    def log(self, message: str) -> None:
        """Stages ("resolving", "merging with"): only with --verbose."""
        if self.verbose:
            self.flush()  # a stage is logged once the method before is done
            self._print(message)

    def say(self, message: str) -> None:
        """What the user must hear unless --quiet (a demo being built on first use)."""
        self._print(message)


_UNITS = {"references": "model", "merge": "group", "score": "task", "shift": "block", "save": "model"}


def _describe(event: ProgressEvent) -> str:
    return f"{event.method or 'experts and base'}: {PHASE_RUNNING[event.phase]}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:  # the app's own options (--host, --port, ...) are parsed by serve.main
        from .ui.serve import main as serve

        serve(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "convert":
        return _convert(args)
    printer = ProgressPrinter(quiet=args.quiet, verbose=args.verbose)
    try:
        from .api import run_merge  # heavy imports after argument parsing
        from .config import load_config_with_notes
        from .demo import unbuilt_demos
        from .export import atomic_folder, check_output_folder

        config, notes = load_config_with_notes(args.config)
        for note in notes:
            printer.say(f"note (mergekit recipe): {note}")
        check_output_folder(args.out, _read_paths(args.config, config))
        for demo in unbuilt_demos(config):
            printer.say(f"first use of the demo's models on this machine: building them ({demo.build_note})")
            demo.ensure(printer.say)
        save = [m.strip() for m in args.save.split(",") if m.strip()] if args.save else config.methods[:1]
        with atomic_folder(args.out, force=args.force) as partial:
            try:
                report = run_merge(config, out_dir=partial, save=save, device=args.device, dtype=args.dtype,
                                   token=os.environ.get("HF_TOKEN"), progress=printer, log=printer.log,
                                   offload=args.offload)
            finally:
                printer.flush()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MergeError, Cancelled) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 1
    except Exception as err:  # a bug or an environment failure: one line unless debugging
        if os.environ.get("COMMERGE_DEBUG"):
            raise
        print(f"error: {err.__class__.__name__}: {err} (set COMMERGE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json())
        return 0
    print(summary(report.to_json(), wide=args.wide), end="")
    print(wrap_verdict("verdict: " + verdict(json.loads(report.to_json())), None if args.wide else WIDTH))
    print(f"wrote {args.out}/report.json" + "".join(f" and {args.out}/{m}/" for m in save))
    return 0


def _convert(args) -> int:
    from .convert import convert

    try:
        done = convert(args.model, args.out, force=args.force, revision=args.revision,
                       token=os.environ.get("HF_TOKEN"))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {', '.join(done.files)}: {done.tensors} tensors, {done.bytes / 2**20:.1f} MiB, read with "
          f"weights_only (no code ran) -> {args.out}/ (safetensors, with the config and tokenizer files)")
    return 0


def _read_paths(config_file: Path, config) -> list[Path]:
    """What a run reads from disk: the config file, and its local models and sample files."""
    refs = [config.base, *(e.model for e in config.experts),
            *(p for e in config.experts for p in (e.calibration, e.evaluation) if p)]
    return [config_file, *(Path(r) for r in refs if Path(r).expanduser().exists())]


WIDTH = 100  # the table and the verdict fit this many columns unless --wide


def summary(report_json: str, wide: bool = False) -> str:
    """A short score and shift table for the terminal: accuracy in %, perplexity as is, one decimal; the
    normalized average in % of the experts; the merge's own seconds (scoring excluded). It fits WIDTH columns
    (task names cut to their column) unless `wide`; the base's row and the experts' come first."""
    report = json.loads(report_json)
    tasks = list(report["experts"])
    percent = in_percent(report)
    fixed = 12 + 8 + 7 + 8 + 9 + 6  # method, avg, norm, shift@last, held-out, sec
    longest = max([len(t) for t in tasks] + [12]) + 1
    column = longest if wide else max(7, min(13, (WIDTH - fixed) // max(len(tasks), 1)))

    def fmt(value: float | None, scale: bool = percent) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}" if scale else f"{value:.1f}"

    def row(name: str, scores: list, rest: str = "") -> str:
        return f"{name if wide else name[:11]:<12}" + "".join(f"{fmt(v):>{column}}" for v in scores) + rest

    legend = (f"scores ({report.get('metric', 'score')}{', %' if percent else ''}); norm: % of the experts' score; "
              "shift@last: last layer group, mean over tasks; held-out: last block's shift on the evaluation "
              "samples; sec: the merge alone")
    lines = [legend] if wide else textwrap.wrap(legend, WIDTH)
    lines.append(f"{'method':<12}" + "".join(f"{t[:column - 1]:>{column}}" for t in tasks)
                 + f"{'avg':>8}{'norm':>7}{'shift@l':>8}{'held':>9}{'sec':>6}")
    base = report.get("base", {}).get("scores") or {}
    if any(v is not None for v in base.values()):
        lines.append(row("base", [base.get(t) for t in tasks]))
    lines.append(row("expert", [report["experts"][t]["score"] for t in tasks]))
    for name, m in report["methods"].items():
        shift, held = (float("nan") if v is None else v for v in (last_shift(m), last_heldout(m)))
        lines.append(row(name, [m["scores"][t] for t in tasks],
                         f"{fmt(m['average_score']):>8}{fmt(m['average_normalized'], True):>7}{shift:>8.3f}"
                         f"{held:>9.3f}{m['seconds']:>6.1f}"))
    return "\n".join(lines) + "\n"


def wrap_verdict(text: str, width: int | None) -> str:
    """The verdict, broken at its ' · ' separators into lines of at most `width` (None: one line)."""
    if width is None or len(text) <= width:
        return text
    lines, current = [], ""
    for part in text.split(" · "):
        candidate = f"{current} · {part}" if current else part
        if current and len(candidate) > width:
            lines.append(current)
            current = "  " + part
        else:
            current = candidate
    lines.append(current)  # a part longer than the width alone is wrapped at its spaces
    return "\n".join(w for line in lines for w in textwrap.wrap(line, width, subsequent_indent="    ",
                                                                 initial_indent="") or [line])


if __name__ == "__main__":
    sys.exit(main())
