"""The progress line of a training run, on top of ``clu.periodic_actions.ReportProgress``."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Dict, Iterable, Optional

from clu import periodic_actions


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress(periodic_actions.ReportProgress):
    """clu's ``ReportProgress`` (triggers every ``every_steps``, on ``on_steps`` and at the last step;
    work-unit note; ``steps_per_sec`` / ``uptime`` scalars to ``writer``) that also keeps the rate
    for the user's progress line.

    Compile time is not counted: the clock starts at the first call, which the loop makes once the
    run's first step has finished. Time spent in ``paused()`` blocks (evaluation, checkpoint
    reloads) is left out of the rate and so of the ETA.
    """

    def __init__(self, total_steps: int, every_steps: int, batch_size: int, writer=None,
                 on_steps: Optional[Iterable[int]] = None):
        super().__init__(num_train_steps=total_steps, every_steps=every_steps, every_secs=None, writer=writer,
                         on_steps=on_steps)
        self.total_steps = int(total_steps)
        self.batch_size = int(batch_size)
        self.steps_per_sec = float("nan")

    def _apply(self, step: int, t: float):
        self.steps_per_sec = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
        super()._apply(step, t)

    @contextlib.contextmanager
    def paused(self):
        t0 = time.monotonic()
        try:
            yield
        finally:
            if self._previous_time is not None:
                self._previous_time += time.monotonic() - t0

    def line(self, step: int, metrics: Dict[str, float], lr: float) -> str:
        eta = (self.total_steps - step) / self.steps_per_sec if self.steps_per_sec > 0 else float("nan")
        return (f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.1f}%) "
                f"loss {metrics['loss']:.4f} lr {lr:.3e} {self.steps_per_sec * self.batch_size:.1f} img/s "
                f"ETA {format_eta(eta)}")
