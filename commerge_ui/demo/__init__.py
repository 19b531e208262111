"""The embedded offline demo: all-MiniLM-L6-v2 and six experts fine-tuned from it on real text."""

from .build import DEMO_CONFIG, DEMO_DIR, ensure_demo, is_built

__all__ = ["DEMO_CONFIG", "DEMO_DIR", "ensure_demo", "is_built"]
