"""Per-browser-session state and the merge run in the background, with progress, ETA and cancel.

Each session has its own temporary folder (uploads it exports, the run's output) and its own cancel flag,
keyed by Gradio's session hash; closing the page cancels a running merge and removes the folder.
"""

from __future__ import annotations

import atexit
import html
import json
import re
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MergeConfig
from ..engine import PHASE_DONE, PHASE_RUNNING, PHASES, ProgressEvent
from ..errors import Cancelled, InputError, MergeError
from ..export import atomic_folder, write_config_bundle
from ..hosting import Policy
from ..report import Report
from .marks import PROBLEM
from .plots import title_of

POLL_SECONDS = 0.5


@dataclass
class KeptRun:
    """A finished run kept for comparison: its label (number and key options), report and report file."""

    label: str
    report: dict
    path: Path


class Session:
    def __init__(self, root: Path, policy: Policy | None = None, sessions: "Sessions | None" = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.policy = policy or Policy.local()
        self.sessions = sessions  # for the app's disk budget
        self.cancel = threading.Event()
        self.running = False
        self.closed = False
        self.runs: list[KeptRun] = []
        self.last_used = time.monotonic()

    def keep(self, report: Report) -> KeptRun:
        """Keep a finished run's report (in memory and as runs/run-<n>.json) for comparing runs."""
        text = report.to_json()
        data = json.loads(text)
        number, o = len(self.runs) + 1, data["options"]
        label = (f"run {number}: α {o['alpha']}, λ {o['lambda']}, {o['calibration_samples']} samples, "
                 f"{o['max_length']} tokens, {len(data['methods'])} methods" + (" (cancelled: partial)"
                                                                                 if data.get("partial") else ""))
        path = self.folder / "runs" / f"run-{number}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        kept = KeptRun(label, data, path)
        self.runs.append(kept)
        return kept

    def remove_if_closed(self) -> None:
        if self.closed and not self.running:
            shutil.rmtree(self.folder, ignore_errors=True)

    def disk_usage(self) -> int:
        return folder_bytes(self.folder)

    def check_room(self, expected: int) -> None:
        if self.sessions is not None:
            self.sessions.check_room(self, expected)

    @property
    def run_folder(self) -> Path:
        return self.folder / "run"


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (links not followed)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


class Sessions:
    """Every open session's state; thread-safe.

    A session's folder goes when its page is closed (`close`), and any session idle for longer than the
    policy's TTL goes with the sweeper (`sweep`, every `sweep_every` seconds once `start_sweeper` ran),
    whatever route opened it: the page, the REST call route or the raw queue. A root this object made itself
    is removed when the process exits.
    """

    def __init__(self, root: Path | None = None, policy: Policy | None = None, ttl: float | None = None) -> None:
        self.policy = policy or Policy.local()
        self.ttl = self.policy.limits.session_ttl_s if ttl is None else ttl
        self.owns_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="commerge-"))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        if self.owns_root:
            atexit.register(shutil.rmtree, self.root, True)

    def get(self, key: str) -> Session:
        with self._lock:
            if key not in self._sessions:
                self.root.mkdir(parents=True, exist_ok=True)
                self._sessions[key] = Session(self.root, self.policy, self)
            session = self._sessions[key]
            session.last_used = time.monotonic()
            return session

    def close(self, key: str) -> None:
        """Cancel the session's run (it stops at the next layer group) and delete its files."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.closed = True
            session.cancel.set()
            session.remove_if_closed()  # a running merge removes it when it stops

    def sweep(self, now: float | None = None) -> list[str]:
        """Close every session idle for longer than the TTL (a running one is busy, not idle), and remove
        folders under the root that no session owns (left by a session closed while its run was writing)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [k for k, s in self._sessions.items() if not s.running and now - s.last_used > self.ttl]
        for key in idle:
            self.close(key)
        with self._lock:
            owned = {s.folder for s in self._sessions.values()}
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder not in owned and folder.name.startswith("session-"):
                    shutil.rmtree(folder, ignore_errors=True)
        return idle

    def start_sweeper(self, every: float = 60.0) -> None:
        """Sweep in a daemon thread every `every` seconds (once per Sessions)."""
        if self._sweeper is not None:
            return

        def loop() -> None:
            while True:
                time.sleep(every)
                try:
                    self.sweep()
                except Exception:  # a sweep that fails (a file in use) is tried again next time
                    continue

        self._sweeper = threading.Thread(target=loop, name="commerge-sweeper", daemon=True)
        self._sweeper.start()

    def disk_usage(self) -> int:
        return folder_bytes(self.root) if self.root.is_dir() else 0

    def check_room(self, session: Session, expected: int) -> None:
        """Refuse a run whose expected output would push the session or the app over its disk budget."""
        limits = self.policy.limits
        for used, budget, whose in ((session.disk_usage(), limits.session_disk_gb, "this session's"),
                                    (self.disk_usage(), limits.app_disk_gb, "the app's")):
            if used + expected > budget * 2**30:
                raise InputError(f"this run would write about {expected / 2**30:.1f} GiB, and {whose} disk budget "
                                 f"of {budget:g} GiB has {max(budget * 2**30 - used, 0) / 2**30:.1f} GiB left; "
                                 "run fewer methods or a smaller model")

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass
class PhaseRow:
    """One row of the progress area: the references, or one method (its merge, scoring and saving)."""

    title: str
    phase: str = ""  # the phase now running ("" before it starts)
    step: int = 0
    total: int = 0
    label: str = ""
    phase_began: float | None = None
    began: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds, once ended
    done: bool = False

    def start(self, phase: str, now: float) -> None:
        self.phase, self.phase_began, self.step, self.total, self.label = phase, now, 0, 0, ""
        self.began = self.began if self.began is not None else now

    def eta(self, now: float) -> float | None:
        """Seconds left in the running phase, from its measured rate."""
        if self.phase_began is None or not self.step or not self.total:
            return None
        return (now - self.phase_began) / self.step * (self.total - self.step)

    def summary(self) -> str:
        parts = [f"{PHASE_DONE[p]} in {self.seconds[p]:.1f} s" for p in PHASES if p in self.seconds]
        return "done: " + ", ".join(parts) if parts else "done"


@dataclass
class RunProgress:
    """What the page shows while a run goes: the references' row and a row per method, each with its phase,
    step and ETA; an overall bar whose ETA comes from the methods already finished."""

    methods: list[str]
    stage: str = "starting"
    rows: dict[str, PhaseRow] = field(init=False)
    report: Report | None = None
    error: str | None = None
    building: bool = False  # the demo's models are being built first: a row of its own, above the others
    build: PhaseRow | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.rows = {"": PhaseRow("Experts and base"), **{m: PhaseRow(title_of(m)) for m in self.methods}}
        if self.building:
            self.build = PhaseRow("Demo build")
            self.build.start("build", time.perf_counter())

    def on_event(self, event: ProgressEvent, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        row = self.rows[event.method]
        if row.phase != event.phase:
            row.start(event.phase, now)
            row.done = False
        row.step, row.total, row.label = event.step, event.total, event.detail or event.label
        if event.ends_phase:
            row.seconds[event.phase] = now - (now if row.phase_began is None else row.phase_began)
            # a method is done once scored and its held-out shift measured (or saved); a later phase starts it again
            row.done = event.phase in ("references", "score", "shift", "save")
            if row.done and event.phase in ("score", "shift"):
                row.phase = ""

    def on_log(self, message: str, now: float | None = None) -> None:
        self.stage = message
        if self.build is not None:
            self._on_build_log(message, time.perf_counter() if now is None else now)

    def _on_build_log(self, message: str, now: float) -> None:
        """The build's fraction from its log ("expert 2/5 ... step 20/50"), so that its row moves with an ETA."""
        assert self.build is not None
        expert = re.search(r"expert (\d+)/(\d+)", message)
        step = re.search(r"step (\d+)/(\d+)", message)
        if expert:
            k, n = int(expert.group(1)), int(expert.group(2))
            part = int(step.group(1)) / int(step.group(2)) if step else 0.0
            self.build.step, self.build.total = round(1000 * (k - 1 + part) / n), 1000
            self.build.label = message.split(": ", 1)[-1][:80]
        if re.search(r"ready in \d+s", message):
            self.build.done, self.build.step, self.build.total = True, 1000, 1000
            self.build.seconds["build"] = now - (self.build.phase_began or now)

    def finish(self, report: Report) -> None:
        """The run's last word: the report's merge times replace the measured ones (they are the table's)."""
        self.report, self.stage = report, "cancelled: the methods that finished are kept" if report.partial else "done"
        for method, result in report.methods.items():
            row = self.rows[method]
            row.done, row.seconds["merge"] = True, result.seconds
            if result.score_seconds is not None:
                row.seconds["score"] = result.score_seconds
            if result.heldout_seconds is not None:
                row.seconds["shift"] = result.heldout_seconds
        self.rows[""].done = True

    def overall(self, now: float | None = None) -> tuple[float, float | None]:
        """(fraction done, seconds left; None until a rate is measured). While the demo builds: the build's.
        Then the references count as one method, a method's merge as half of it; methods not started take the
        mean time of those finished, or before any has, estimates from the first measured rates (scoring a
        merge costs what scoring the experts did per task; the running merge's rate per layer group)."""
        now = time.perf_counter() if now is None else now
        if self.report is not None:
            return 1.0, 0.0
        if self.build is not None and not self.build.done:
            return (self.build.step / self.build.total if self.build.total else 0.0), self.build.eta(now)
        fraction = sum(1.0 if r.done else _share(r) for r in self.rows.values()) / len(self.rows)
        finished = [r for k, r in self.rows.items() if k and r.done]
        if finished:
            merge = sum(r.seconds.get("merge", 0.0) for r in finished) / len(finished)
            score = sum(r.seconds.get("score", 0.0) + r.seconds.get("shift", 0.0) for r in finished) / len(finished)
        else:
            estimate = self._first_rates(now)
            if estimate is None:
                return fraction, None
            merge, score = estimate
        left = 0.0
        for key, row in self.rows.items():
            if row.done:
                continue
            if row.began is None:
                left += merge + score if key else 0.0
            elif row.phase == "merge":
                eta = row.eta(now)
                ran = 0.0 if row.phase_began is None else now - row.phase_began
                left += (max(merge - ran, 0.0) if eta is None else eta) + score
            else:
                left += row.eta(now) or 0.0
        return fraction, left

    def _first_rates(self, now: float) -> tuple[float, float] | None:
        """(merge, scoring) seconds per method, from the rates measured before any method has finished."""
        refs = self.rows[""]
        per_model = None
        if refs.done and refs.total and "references" in refs.seconds:
            per_model = refs.seconds["references"] / refs.total
        elif refs.phase == "references" and refs.step and refs.phase_began is not None:
            per_model = (now - refs.phase_began) / refs.step
        if per_model is None:
            return None
        score = per_model * max(refs.total / 2, 1)  # each method is scored on every task, as each expert was
        merge = next(((now - r.phase_began) / r.step * r.total for k, r in self.rows.items()
                      if k and r.phase == "merge" and r.step and r.total and r.phase_began is not None), score)
        return merge, score

    def html(self) -> str:
        now = time.perf_counter()
        fraction, left = self.overall(now)
        if self.error:
            overall = "stopped"
        elif self.report is not None:
            overall = "finished"
        else:
            what = "the demo's build: " if self.build is not None and not self.build.done else ""
            overall = f"{what}{100 * fraction:.0f} %" + (f" · about {_duration(left)} left" if left is not None
                                                         else " · time left known after the first measured step")
        rows = [f'<div class="cm-progress-row cm-overall"><b>Overall</b><progress value="{fraction:.3f}" max="1">'
                f'</progress><span>{overall}</span></div>']
        shown = ([("build", self.build)] if self.build is not None else []) + list(self.rows.items())
        for key, row in shown:
            if self.report is not None and self.report.partial and key not in ("", "build") and \
                    key not in self.report.methods:
                info, value, total = "cancelled: nothing of it was kept", 0, 1
            elif row.done or self.report is not None:
                info, value, total = row.summary(), 1, 1
            elif row.began is None:
                info, value, total = ("stopped" if self.error else "waiting"), 0, 1
            elif self.error:
                info = f"stopped while {PHASE_RUNNING.get(row.phase, 'starting')}"
                value, total = row.step, max(row.total, 1)
            else:
                eta = row.eta(now)
                what = PHASE_RUNNING.get(row.phase, "starting")
                count = f" {row.step}/{row.total}" if row.total else ""
                label = f" · {html.escape(row.label)}" if row.label else ""
                info = f"{what}{count}{label}" + (f" · ETA {eta:.0f} s" if eta is not None else "")
                value, total = row.step, max(row.total, 1)
            rows.append(f'<div class="cm-progress-row" data-method="{key or "references"}">'
                        f'<b>{html.escape(row.title)}</b><progress value="{value}" max="{total}"></progress>'
                        f'<span>{info}</span></div>')
        status = html.escape(self.error or self.stage)
        return f'<div class="cm-progress"><p class="cm-stage">{status}</p>{"".join(rows)}</div>'


def _share(row: PhaseRow) -> float:
    """How much of its row a running phase has done."""
    part = row.step / row.total if row.total else 0.0
    return {"references": part, "merge": 0.5 * part, "score": 0.5 + 0.3 * part, "shift": 0.8 + 0.2 * part,
            "save": 1.0}.get(row.phase, 0.0)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_in_background(config: MergeConfig, session: Session, save: list[str], device: str, dtype: str,
                      token: str | None = None, bundle: Path | None = None) -> Iterator[RunProgress]:
    """Run the merge in a worker thread; yield the progress every half second, last with a report or error.

    The output goes to the session's run folder atomically: a failed or cancelled run leaves the previous
    run's files as they were. The session's policy says which token reaches the Hub, where the inputs may
    come from (`bundle`: an uploaded config bundle's folder) and what its messages may show.
    """
    policy = session.policy
    from ..api import run_merge  # heavy imports only when a merge runs

    progress = RunProgress(list(config.methods))
    events: queue.Queue = queue.Queue()
    session.cancel.clear()

    timer = threading.Timer(policy.limits.run_seconds, session.cancel.set)  # one run cannot hold the queue
    timer.daemon = True

    def work() -> None:
        outcome: tuple[str, object] = ("error", f"{PROBLEM} the run stopped unexpectedly")
        try:
            with atomic_folder(session.run_folder, force=True) as partial:
                report = run_merge(config, out_dir=partial, save=save, device=device, dtype=dtype,
                                   token=policy.hub_token(token), progress=lambda e: events.put(("event", e)),
                                   cancel=session.cancel.is_set, log=lambda m: events.put(("log", policy.public(m))),
                                   confinement=policy.confinement(bundle), keep_finished=True)
                write_config_bundle(config, partial)
            session.keep(report)
            outcome = ("report", report)
        except Cancelled:
            over = " (it ran past this instance's limit of " + _duration(policy.limits.run_seconds) + " per run)"
            outcome = ("error", "Cancelled" + (over if not timer.is_alive() and not session.closed else "")
                       + ": nothing was written; the previous results are kept.")
        except InputError as err:
            outcome = ("error", f"{PROBLEM} {policy.public(str(err))}")
        except MergeError as err:
            outcome = ("error", f"{PROBLEM} merge failed: {policy.public(str(err))}")
        except Exception as err:  # a bug or the environment: say what, keep the app up
            outcome = ("error", f"{PROBLEM} unexpected {err.__class__.__name__}: {policy.public(str(err))}")
        finally:  # the session is free (and a closed one's files gone) before the page hears the outcome
            timer.cancel()
            session.running = False
            session.remove_if_closed()
            events.put(outcome)

    session.running = True
    worker = threading.Thread(target=work, name="commerge-run", daemon=True)
    timer.start()
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
                progress.finish(payload)
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
