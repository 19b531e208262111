"""What reading a very large sample file costs: the form's preview and `read_samples(limit=256)`.

    python benchmarks/bench_samples.py [--mb 199] [--lines 16000000] [--code DIR]

Writes a text file of `--lines` lines (about `--mb` MB), then runs each reader in a fresh process and prints its
wall time and peak resident memory. `--code` runs another checkout's package (e.g. an older commit in a
worktree) on the same file, for a before/after table measured side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
path, what = sys.argv[2], sys.argv[3]
began = time.perf_counter()
if what == "read_samples(limit=256)":
    from commerge_ui.samples import read_samples
    count = len(read_samples(path, limit=256))
else:
    from commerge_ui.ui.form import sample_preview
    rows, note = sample_preview(path, need_labels=False)
    count = len(rows)
print(json.dumps({"seconds": time.perf_counter() - began, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": count}))
"""


def write_file(path: Path, lines: int, megabytes: int) -> None:
    width = max(megabytes * 10**6 // lines - 1, 1)
    line = ("sample text " * (width // 12 + 1))[:width] + "\n"
    with open(path, "w") as stream:
        for _ in range(lines // 100_000):
            stream.write(line * 100_000)


def measure(code: Path, path: Path, what: str) -> dict:
    module = "commerge_ui.samples" if what.startswith("read_samples") else "commerge_ui.ui.form"
    imports = (f"import resource, sys; sys.path.insert(0, sys.argv[1]); import {module}; "
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")  # the process before reading
    baseline = subprocess.run([sys.executable, "-c", imports, str(code)], capture_output=True, text=True, check=True)
    result = subprocess.run([sys.executable, "-c", PROBE, str(code), str(path), what], capture_output=True, text=True)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1]}
    data = json.loads(result.stdout)
    data["imports_mb"] = float(baseline.stdout)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=199)
    parser.add_argument("--lines", type=int, default=16_000_000)
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="a checkout whose package to measure (repeatable; default: this one)")
    args = parser.parse_args()
    codes = args.code or [Path(__file__).resolve().parents[1]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.txt"
        began = time.perf_counter()
        write_file(path, args.lines, args.mb)
        print(f"file: {path.stat().st_size / 1e6:.0f} MB, {args.lines} lines (written in "
              f"{time.perf_counter() - began:.0f} s)")
        print(f"{'code':<28}{'reader':<26}{'seconds':>9}{'peak MB':>9}{'imports MB':>12}  (peak: the process's "
              "resident memory at its highest; imports: the same process before reading)")
        for code in codes:
            for what in ("preview", "read_samples(limit=256)"):
                r = measure(code, path, what)
                if "error" in r:
                    print(f"{str(code)[-27:]:<28}{what:<26}  {r['error']}")
                else:
                    print(f"{str(code)[-27:]:<28}{what:<26}{r['seconds']:>9.1f}{r['peak_mb']:>9.0f}{r['imports_mb']:>12.0f}")


if __name__ == "__main__":
    main()
