"""Per-browser-session state and the merge run in the background, with progress, ETA and cancel.

Each session has its own temporary folder (uploads it exports, the run's output) and its own cancel flag,
keyed by Gradio's session hash; closing the page cancels a running merge and removes the folder.
"""

from __future__ import annotations

import html
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MergeConfig
from ..engine import ProgressEvent
from ..errors import Cancelled, InputError, MergeError
from ..export import atomic_folder, write_config_bundle
from ..report import Report
from .plots import title_of

POLL_SECONDS = 0.5


class Session:
    def __init__(self, root: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.cancel = threading.Event()
        self.running = False
        self.closed = False

    def remove_if_closed(self) -> None:
        if self.closed and not self.running:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def run_folder(self) -> Path:
        return self.folder / "run"


class Sessions:
    """Every open session's state; thread-safe."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="commerge-"))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Session:
        with self._lock:
            if key not in self._sessions:
                self.root.mkdir(parents=True, exist_ok=True)
                self._sessions[key] = Session(self.root)
            return self._sessions[key]

    def close(self, key: str) -> None:
        """Cancel the session's run (it stops at the next layer group) and delete its files."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.closed = True
            session.cancel.set()
            session.remove_if_closed()  # a running merge removes it when it stops

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass
class MethodProgress:
    step: int = 0
    total: int = 0
    label: str = ""
    began: float | None = None
    seconds: float | None = None


@dataclass
class RunProgress:
    """What the page shows while a run goes: a bar per method, the current layer group and an ETA."""

    methods: list[str]
    stage: str = "starting"
    per_method: dict[str, MethodProgress] = field(init=False)
    report: Report | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.per_method = {m: MethodProgress() for m in self.methods}

    def on_event(self, event: ProgressEvent) -> None:
        now = time.perf_counter()
        current = self.per_method[event.method]
        if current.began is None:
            current.began = now
            for method, other in self.per_method.items():  # the previous method has finished
                if method != event.method and other.began is not None and other.seconds is None:
                    other.seconds = now - other.began
        current.step, current.total, current.label = event.step, event.total, event.label

    def on_log(self, message: str) -> None:
        self.stage = message

    def eta(self, method: str) -> float | None:
        current = self.per_method[method]
        if current.began is None or not current.step or not current.total:
            return None
        elapsed = time.perf_counter() - current.began
        return elapsed / current.step * (current.total - current.step)

    def html(self) -> str:
        rows = []
        for method, p in self.per_method.items():
            if p.seconds is not None or (self.report is not None):
                info = "done" + (f" in {p.seconds:.1f} s" if p.seconds is not None else "")
                value, total = 1, 1
            elif p.began is None:
                info, value, total = "waiting", 0, 1
            else:
                eta = self.eta(method)
                info = (f"{p.step}/{p.total} · {html.escape(p.label)}"
                        + (f" · ETA {eta:.0f} s" if eta is not None else ""))
                value, total = p.step, max(p.total, 1)
            rows.append(f'<div class="cm-progress-row" data-method="{method}"><b>{html.escape(title_of(method))}</b>'
                        f'<progress value="{value}" max="{total}"></progress><span>{info}</span></div>')
        status = html.escape(self.error or self.stage)
        return f'<div class="cm-progress"><p class="cm-stage">{status}</p>{"".join(rows)}</div>'


def run_in_background(config: MergeConfig, session: Session, save: list[str], device: str, dtype: str,
                      token: str | None = None) -> Iterator[RunProgress]:
    """Run the merge in a worker thread; yield the progress every half second, last with a report or error.

    The output goes to the session's run folder atomically: a failed or cancelled run leaves the previous
    run's files as they were.
    """
    from ..api import run_merge  # heavy imports only when a merge runs

    progress = RunProgress(list(config.methods))
    events: queue.Queue = queue.Queue()
    session.cancel.clear()

    def work() -> None:
        outcome: tuple[str, object] = ("error", "❌ the run stopped unexpectedly")
        try:
            with atomic_folder(session.run_folder, force=True) as partial:
                report = run_merge(config, out_dir=partial, save=save, device=device, dtype=dtype, token=token,
                                   progress=lambda e: events.put(("event", e)),
                                   cancel=session.cancel.is_set, log=lambda m: events.put(("log", m)))
                write_config_bundle(config, partial)
            outcome = ("report", report)
        except Cancelled:
            outcome = ("error", "Cancelled: nothing was written; the previous results are kept.")
        except InputError as err:
            outcome = ("error", f"❌ {err}")
        except MergeError as err:
            outcome = ("error", f"❌ merge failed: {err}")
        except Exception as err:  # a bug or the environment: say what, keep the app up
            outcome = ("error", f"❌ unexpected {err.__class__.__name__}: {err}")
        finally:  # the session is free (and a closed one's files gone) before the page hears the outcome
            session.running = False
            session.remove_if_closed()
            events.put(outcome)

    session.running = True
    worker = threading.Thread(target=work, name="commerge-run", daemon=True)
    worker.start()
    last_yield = time.perf_counter()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "event":
                progress.on_event(payload)
            elif kind == "log":
                progress.on_log(payload)
            elif kind == "report":
                progress.report, progress.stage = payload, "done"
                for method, result in payload.methods.items():
                    progress.per_method[method].seconds = result.seconds
                yield progress
                return
            elif kind == "error":
                progress.error = payload
                yield progress
                return
            if time.perf_counter() - last_yield >= POLL_SECONDS:
                last_yield = time.perf_counter()
                yield progress
    finally:
        if worker.is_alive():  # the page stopped listening (closed, or the event was cancelled): stop the run
            session.cancel.set()
