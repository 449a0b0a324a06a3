"""The official trainer's stage-2 rule (deim_dfine.md §9.6), as a small resumable state.

Stage 1 is every epoch before ``data.stop_epoch`` (augmentation on); stage 2 the epochs from it on.

* At the start of ``stop_epoch`` the best stage-1 checkpoint (by AP) is reloaded, and the running
  best is the best stage-1 AP.
* After every stage-2 evaluation: an AP above the running best becomes the running best; any
  other AP resets the running best and the best stage-1 checkpoint is reloaded before the next
  epoch (so the evaluation after a reload always counts as an improvement).

The state goes into every checkpoint (``to_json``), so a resumed run takes the same decisions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional


@dataclasses.dataclass
class Stage2Rule:
    started: bool = False  # the reload at stop_epoch is done
    running_best: Optional[float] = None  # AP to beat; None right after a reset
    reload_pending: bool = False  # reload the best stage-1 checkpoint before the next epoch

    def start(self, stage1_best_ap: Optional[float]) -> None:
        """At ``stop_epoch``, after reloading the best stage-1 checkpoint."""
        self.started, self.running_best, self.reload_pending = True, stage1_best_ap, False

    def after_eval(self, ap: float) -> bool:
        """Record a stage-2 evaluation; True if it did not improve (a reload is now pending)."""
        if self.running_best is None or ap > self.running_best:
            self.running_best = ap
            return False
        self.running_best, self.reload_pending = None, True
        return True

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Optional[Dict[str, Any]]) -> "Stage2Rule":
        return cls(**(d or {}))
