"""python -m commerge_ui.demo build | samples: rebuild the demo's models, or rewrite its sample files."""

import sys

from .build import build_models, write_samples

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "samples":
        write_samples()
    elif command == "build":
        build_models()
    else:
        sys.exit("usage: python -m commerge_ui.demo [build|samples]")
