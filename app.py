"""The commerge_ui app: `python app.py` (also the entry point of the Hugging Face Space)."""

import threading

from commerge_ui.demo import ensure_demo
from commerge_ui.ui import build_app, launch

if __name__ == "__main__":
    # The demo's experts are fine-tuned at first use (a few minutes on CPU); the page is up meanwhile,
    # and a run on the demo waits for the build.
    threading.Thread(target=ensure_demo, daemon=True, name="demo-build").start()
    launch(build_app())
