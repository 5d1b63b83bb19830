"""Suite-wide setup.

hypothesis is imported here, at collection, on purpose: its pytest plugin otherwise imports it
lazily at session end, deep in the stack, where CPython 3.11.7's ``ast.parse`` fails with
"AST constructor recursion depth mismatch" (fixed in 3.11.8).
"""

import faulthandler
import hashlib
import os
import sys
import threading
import time
from typing import Any

import hypothesis
import hypothesis.core
import hypothesis.stateful
import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.internal import reflection

# Keep hypothesis's files (example database, constants cache) with pytest's cache, not as a new
# top-level folder.
set_hypothesis_home_dir(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "hypothesis")
)

if sys.version_info[:3] < (3, 11, 8):
    # The same CPython bug reaches hypothesis another way: to key its example database it calls
    # inspect.getsource on a state machine class, which ast.parse()s the whole module deep in
    # the stack. Where that raises SystemError, key by the qualified name instead, as hypothesis
    # itself does when no source can be read. Only the database key changes, never a test.
    _digest = reflection.function_digest

    def _function_digest(function: Any) -> bytes:
        try:
            return _digest(function)
        except SystemError:
            name = getattr(function, "__qualname__", None) or repr(function)
            return hashlib.sha384(name.encode()).digest()

    for _module in (reflection, hypothesis.core, hypothesis.stateful):
        _module.function_digest = _function_digest  # type: ignore[attr-defined]


# How long the interpreter may take to exit once the run is over.
EXIT_GRACE_S = 60.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI nothing may be skipped: a skip there means a broker or database went missing."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; in CI that is a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A run whose report is written must also end: a thread a test left running (an unclosed
    SQLite connection's worker, a blocked executor job) would otherwise keep the interpreter from
    exiting, and CI from finishing, for ever. Past ``EXIT_GRACE_S`` the threads still alive are
    named, every thread's stack is printed, and the process exits 1."""

    def watch() -> None:
        time.sleep(EXIT_GRACE_S)
        alive = [t for t in threading.enumerate()
                 if t is not threading.main_thread() and t is not threading.current_thread() and not t.daemon]
        err = sys.__stderr__
        if err is None:
            os._exit(1)
        err.write(f"\nthe test run had not exited {EXIT_GRACE_S:.0f} s after its end; threads still "
                  f"running: {', '.join(repr(t) for t in alive) or '(none but daemons)'}\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.flush()
        os._exit(1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()
