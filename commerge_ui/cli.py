"""`commerge merge CONFIG.yaml --out DIR`: exit 0 on success, 2 on bad input, 1 on other failures."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import load_config
from .demo import unbuilt_demos
from .engine import ProgressEvent
from .errors import Cancelled, InputError, MergeError
from .export import atomic_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commerge", description="Merge fine-tuned experts with Chain of Merges.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge the experts of a config and write a report")
    merge.add_argument("config", type=Path, help="the merge config (YAML)")
    merge.add_argument("--out", type=Path, required=True, help="output folder (written atomically)")
    merge.add_argument("--save", default=None,
                       help="methods whose merged model is saved, comma-separated (default: the first method)")
    merge.add_argument("--device", default="auto", help="auto | cpu | cuda")
    merge.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    merge.add_argument("--force", action="store_true", help="replace an existing output folder")
    merge.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


class ProgressPrinter:
    """One line per layer group on stderr, with an ETA for the current method."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.method, self.began = quiet, "", time.perf_counter()

    def __call__(self, event: ProgressEvent) -> None:
        if event.method != self.method:
            self.method, self.began = event.method, time.perf_counter()
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.began
        eta = elapsed / event.step * (event.total - event.step) if event.step else 0.0
        print(f"  {event.method}: {event.step}/{event.total} {event.label} (eta {eta:.0f}s)", file=sys.stderr)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    printer = ProgressPrinter(args.quiet)
    try:
        from .api import run_merge  # heavy imports after argument parsing

        config = load_config(args.config)
        for demo in unbuilt_demos(config):
            printer.log(f"first use of the demo's models on this machine: building them ({demo.build_note})")
            demo.ensure(printer.log)
        save = [m.strip() for m in args.save.split(",") if m.strip()] if args.save else config.methods[:1]
        with atomic_folder(args.out, force=args.force) as partial:
            report = run_merge(config, out_dir=partial, save=save, device=args.device, dtype=args.dtype,
                               token=os.environ.get("HF_TOKEN"), progress=printer, log=printer.log)
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
    print(summary(report.to_json()), end="")
    print(f"wrote {args.out}/report.json" + "".join(f" and {args.out}/{m}/" for m in save))
    return 0


def summary(report_json: str) -> str:
    """A short score and shift table for the terminal."""
    import json

    report = json.loads(report_json)
    tasks = list(report["experts"])
    lines = [f"{'method':<16}" + "".join(f"{t[:12]:>13}" for t in tasks) + f"{'avg':>9}{'norm':>8}{'shift@last':>12}{'sec':>8}"]
    lines.append(f"{'expert':<16}" + "".join(f"{_fmt(report['experts'][t]['score']):>13}" for t in tasks))
    for name, m in report["methods"].items():
        last = [s[-1] for s in m["shift"].values() if s]
        shift = sum(last) / len(last) if last else float("nan")
        lines.append(f"{name:<16}" + "".join(f"{_fmt(m['scores'][t]):>13}" for t in tasks)
                     + f"{_fmt(m['average_score']):>9}{_fmt(m['average_normalized']):>8}{shift:>12.4f}{m['seconds']:>8.1f}")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
