"""Shift on samples the merge never saw, per task and method, from a run's report (commerge_ui/heldout.py measures
it in every run): the last block's output, held out beside calibration.

    commerge merge assets/demo/demo.yaml --out out/demo --force
    python scripts/heldout_shift.py out/demo/report.json
"""

import json
import sys
from pathlib import Path


def main(report_path: str) -> None:
    report = json.loads(Path(report_path).read_text())
    methods = {m: r for m, r in report["methods"].items() if r.get("heldout_shift")}
    if not methods:
        sys.exit(f"{report_path}: no held-out shift (no evaluation samples, or heldout_shift: false)")
    tasks = list(next(iter(methods.values()))["heldout_shift"])
    print("held-out / calibration shift of the last block's output")
    print("task".ljust(12) + "".join(m[:16].rjust(18) for m in methods))
    for task in tasks:
        print(task[:12].ljust(12) + "".join(
            f"{r['heldout_shift'][task][-1]:9.3f} /{r['block_shift'][task][-1]:6.3f}".rjust(18) for r in methods.values()))
    mean = {m: (sum(r["heldout_shift"][t][-1] for t in tasks) / len(tasks),
                sum(r["block_shift"][t][-1] for t in tasks) / len(tasks)) for m, r in methods.items()}
    print("mean".ljust(12) + "".join(f"{h:9.3f} /{c:6.3f}".rjust(18) for h, c in mean.values()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
