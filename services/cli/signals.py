"""How ``serve`` and ``worker`` stop on SIGTERM and SIGINT: gracefully, in bounded time, or at once.

The first signal asks the process to stop: the HTTP server drains, the service cancels a start
still in progress and stops within ``services.runtime.service.STOP_TIMEOUT_S``, abandoning what
has not finished (an uncommitted Kafka transaction is never seen, a SQLite one is all or
nothing). A watchdog makes the promise hold whatever hangs: shortly before ``EXIT_WITHIN_S``
after the first signal the process exits with status 1, saying so. A second signal exits at
once, with status 128 + the signal's number, as a shell reports a process killed by it.

This module must never stop anything itself: it only turns signals into the caller's request.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

# The promise: a process that got SIGTERM is gone this many seconds later, whatever its state.
EXIT_WITHIN_S = 30.0
# The watchdog fires a little before, so the exit itself fits inside the promise.
_WATCHDOG_S = EXIT_WITHIN_S - 2.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _say(message: str) -> None:
    # Straight to the descriptor: this runs inside a signal handler, maybe while stderr's buffer
    # is being written by the interrupted code.
    os.write(sys.stderr.fileno(), f"agentbus: {message}\n".encode())


def _exit_now(status: int) -> None:
    # os._exit: no atexit handlers and no joining of threads (Faust's consumer thread among them).
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)


class StopOnSignals:
    """Turns the first SIGTERM/SIGINT into ``request_stop(signal number)``, arms the watchdog, and
    exits at once on a second one. ``what`` names the process in its messages."""

    def __init__(self, what: str, request_stop: Callable[[int], None], *,
                 watchdog_s: float = _WATCHDOG_S) -> None:
        self.what = what
        self.request_stop = request_stop
        self.watchdog_s = watchdog_s
        self.received: int | None = None
        self._watchdog: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def handle(self, sig: int, frame: object = None) -> None:
        name = signal.Signals(sig).name
        if self.received is not None:
            _say(f"{self.what}: {name} again: exiting at once, without finishing the stop")
            _exit_now(128 + sig)
        self.received = sig
        _say(f"{self.what}: {name}: stopping (at most {EXIT_WITHIN_S:.0f} s; send it again to exit at once)")
        self._watchdog = threading.Timer(self.watchdog_s, self._overdue)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.request_stop(sig)

    def _overdue(self) -> None:
        _say(f"{self.what}: did not stop within {self.watchdog_s:.0f} s of the signal; exiting now "
             "(an unfinished Kafka transaction is aborted by the broker)")
        _exit_now(1)

    def disarm(self) -> None:
        """The stop finished: the watchdog has nothing left to guard."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    def exit_as_signalled(self) -> None:
        """End the process as the signal that stopped it asks (the shell then reports it as such),
        without waiting for threads a stop abandoned."""
        assert self.received is not None
        self.disarm()
        signal.signal(self.received, signal.SIG_DFL)
        signal.raise_signal(self.received)

    def exit_if_threads_linger(self, status: int) -> None:
        """After a stop: exit with ``status`` now if threads the stop abandoned would hold the
        interpreter's exit (Faust's consumer thread is not a daemon)."""
        self.disarm()
        lingering = [t.name for t in threading.enumerate()
                     if t.is_alive() and not t.daemon and t is not threading.main_thread()]
        if lingering:
            _say(f"{self.what}: abandoned threads still running ({', '.join(lingering)}); exiting")
            _exit_now(status)
