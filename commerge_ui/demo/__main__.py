"""python -m commerge_ui.demo build | samples | train | lm [options]: put the text demo's experts together from
their stored deltas, rewrite its committed sample files, fine-tune and store its experts anew (train.py), or build
the SmolLM2 language-model demo (lm.py)."""

import sys

from .build import build_models, write_samples

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "samples":
        write_samples()
    elif command == "build":
        build_models()
    elif command == "train":
        from .train import main

        main(sys.argv[2:])
    elif command == "lm":
        from .lm import main

        main(sys.argv[2:])
    else:
        sys.exit("usage: python -m commerge_ui.demo [build|samples|train|lm]")
