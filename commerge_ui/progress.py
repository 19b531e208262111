"""Where a run is: its phases and the progress events the engine sends (no torch: the CLI's --help needs it)."""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("references", "merge", "score", "shift", "save")
# What a run is doing in each phase, and what it did, as the CLI and the page say it.
PHASE_RUNNING = {"references": "scoring", "merge": "merging", "score": "scoring",
                 "shift": "measuring the held-out shift", "save": "saving", "build": "building"}
PHASE_DONE = {"references": "scored", "merge": "merged", "score": "scored", "shift": "held-out shift measured",
              "save": "saved"}


@dataclass
class ProgressEvent:
    """Where a run is. Phases, in order: "references" (the experts and the base scored, method ""), then per
    method "merge" (layer groups), "score" (the merged model on each task), "shift" (blocks: the shift on the
    evaluation samples, where measured) and "save". A phase has ended at step == total (for "merge", once
    total > 0)."""

    method: str
    step: int  # units of the phase done: layer groups, models or tasks scored, blocks
    total: int  # 0 at a merge's first event: not known until block 0's layer groups are found
    label: str  # the unit just done (merge) or now running (the other phases)
    phase: str = "merge"
    detail: str = ""  # progress inside the unit (a micro-batch of a long layer group); step is unchanged
    seconds: float | None = None  # on a method's first "score" event: its merge time as the report states it

    @property
    def ends_phase(self) -> bool:
        return self.step == self.total and (self.total > 0 or self.phase != "merge")
