"""Shift on sentences the merge never saw (commerge_ui/heldout.py), per task and method.

    commerge merge assets/demo/demo.yaml --out out/demo --save com,regmean,average --force
    python scripts/heldout_shift.py assets/demo/demo.yaml out/demo com regmean average
"""

import sys
from pathlib import Path

from commerge_ui.config import load_config
from commerge_ui.heldout import heldout_shift


def main(config_path: str, out_dir: str, *methods: str) -> None:
    config = load_config(config_path)
    shift = heldout_shift(config, {m: Path(out_dir) / m for m in methods})
    print("task".ljust(10) + "".join(m.rjust(10) for m in methods))
    for task in shift[methods[0]]:
        print(task.ljust(10) + "".join(f"{shift[m][task]:10.3f}" for m in methods))
    print("mean".ljust(10) + "".join(f"{sum(shift[m].values()) / len(shift[m]):10.3f}" for m in methods))


if __name__ == "__main__":
    main(*sys.argv[1:])
