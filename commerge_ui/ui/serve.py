"""Serving the app: `python app.py` or `commerge app`, with the options below.

    python app.py [--host 127.0.0.1] [--port 7860] [--trust-network] [--prepare auto|text|all|none]

Local by default (127.0.0.1: local folders, the owner's Hub token, the local limits). Hosted (docs/hosting.md)
when SPACE_ID is set (a Space), when COMMERGE_HOSTED=1, or when --host is anything but loopback;
--trust-network serves local mode to a network you trust instead, and says so at start.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from ..demo import DEMOS
from ..hosting import hosted_from
from . import handlers
from .app import build_app, launch


def prepare(keys: list[str], arrival: bool = True) -> None:
    """Build the demos' models in the background, one after the other (the page is up meanwhile), and, after the
    text demo, precompute the page's default run once (results on arrival). The text demo takes seconds; the
    language-model demo fine-tunes five experts (minutes on a CPU)."""
    def say(message: str) -> None:
        print(message, flush=True)

    for key in keys:
        try:
            DEMOS[key].ensure(say)
            if key == "text" and arrival:
                handlers.precompute_default_run(DEMOS[key].config, log=say)
        except Exception as err:  # the page says the demo is not ready; the app stays up
            print(f"preparing the {key} demo failed: {err.__class__.__name__}: {err}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="commerge app", description="The commerge_ui app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (anything but loopback runs hosted unless --trust-network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--trust-network", action="store_true",
                        help="serve local mode (server folders readable, the owner's Hub token used, local limits) "
                             "on a non-loopback address: only for a network whose every user you trust")
    parser.add_argument("--no-arrival", action="store_true",
                        help="do not precompute the default demo run the page opens on (results on arrival)")
    parser.add_argument("--prepare", default=os.environ.get("COMMERGE_PREPARE", "auto"),
                        choices=["auto", "text", "all", "none"],
                        help="demos built at start-up in the background (auto: hosted all, else the text demo; "
                             "hosted, a visitor never starts a build)")
    args = parser.parse_args(argv)
    hosted = hosted_from(args.host, args.trust_network)
    if not hosted and args.trust_network:
        print(f"local mode on {args.host}: every visitor can read this machine's files and use its Hub token",
              file=sys.stderr, flush=True)
    keys = {"auto": list(DEMOS) if hosted else ["text"], "text": ["text"], "all": list(DEMOS), "none": []}[args.prepare]
    threading.Thread(target=prepare, args=(keys, not args.no_arrival), daemon=True, name="demo-build").start()
    launch(build_app(hosted=hosted), trust_network=args.trust_network, server_name=args.host, server_port=args.port)
