"""The Gradio app (needs the `app` extra: pip install -e ".[app]")."""

from .app import build_app, launch

__all__ = ["build_app", "launch"]
