"""Suite-wide setup.

hypothesis is imported here, at collection, on purpose: its pytest plugin otherwise imports it
lazily at session end, deep in the stack, where CPython 3.11.7's ``ast.parse`` fails with
"AST constructor recursion depth mismatch" (fixed in 3.11.8).
"""

import os

import hypothesis  # noqa: F401
import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI nothing may be skipped: a skip there means a broker or database went missing."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; in CI that is a failure", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
