"""SIGTERM (preemption) and SIGINT: save the current step and stop, on every process at the same step."""

import signal

import jax


class StopSignals:
    """SIGTERM and SIGINT ask the loop to save and stop after the current step; a second SIGINT
    interrupts at once. With several processes, JAX's preemption service catches the signal and
    `stop_requested` asks it, so that every process stops at the same step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if jax.process_count() == 1:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stop_requested(self, step: int) -> bool:
        if self.received is not None:
            return True
        if jax.process_count() > 1:  # every process must stop at the same step
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # no preemption service in this cluster setup
                return False
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name
