"""When to stop early: SIGTERM/SIGINT, agreed by every process of the run.

``StopRequest`` is a context manager; ``should_stop(step)`` is called after every train step and
answers the same on all processes, so that all of them save the same step and exit together:

* one process: a Python handler turns SIGTERM/SIGINT into a flag;
* several processes (``jax.distributed``): JAX's preemption service catches SIGTERM in whichever
  process receives it and ``multihost_utils.reached_preemption_sync_point(step)`` returns True on
  all processes at the same step. No Python SIGTERM handler is installed then (it would replace
  JAX's); SIGINT keeps its default (the process dies and the others fail over as below).

A process that dies without warning is seen by the others through the distributed runtime's
heartbeats (``sharding.maybe_initialize_distributed``) or as a failed collective.
"""

from __future__ import annotations

import logging
import signal

import jax

log = logging.getLogger(__name__)


class StopRequest:
    """``with StopRequest() as stop: ... if stop.should_stop(step): save and leave``."""

    def __init__(self):
        self._requested = False
        self._old = {}
        self._multi = False

    def __enter__(self):
        self._multi = jax.process_count() > 1
        for s in () if self._multi else (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if not self._multi:
            return self._requested
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            log.warning("process %d: a process of the run received SIGTERM; all save step %d and stop",
                        jax.process_index(), step)
            return True
        return False

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
