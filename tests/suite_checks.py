"""Checks on the test run as a whole, hooked in by conftest.py:

- a test skipped because a tool is missing (a system program such as espeak-ng or chromium, or a
  Python package) fails instead: the README's test command installs the tools, so such a skip
  means the suite did not run whole;
- under bin/test, which gives each run a temporary folder of its own (GROUNDED_TEST_TMPDIR), the
  run fails if the tests left anything in it besides pytest's own folders: every test cleans up.
"""

import os
import re
import tempfile

import pytest

MISSING_TOOL = re.compile(r"\bnot installed\b|could not import|no module named|command not found|"
                          r"\b(?:espeak-ng|sox|chromium|ffmpeg)\b|bin/system-deps", re.IGNORECASE)
# What other programs leave in the temporary folder, which no test makes or can clean up: pytest's
# own folders, torch's compile cache (open_clip's import makes it), onnxruntime's
# telemetry session file, which it writes whatever disable_telemetry_events() says, and the
# runtime folder the PulseAudio client library (Chromium's audio, espeak-ng) makes when XDG_RUNTIME_DIR is unset.
REUSED = re.compile(r"pytest-of-.+|torchinductor_.+|\.ses|pulse-\w+")


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def fail_if_a_tool_is_missing(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if MISSING_TOOL.search(reason):
            report.outcome = "failed"
            report.longrepr = (f"skipped because a tool is missing, and that is no pass: {reason}\n"
                               "(bin/test installs the system tools through bin/system-deps)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_if_a_tool_is_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_if_a_tool_is_missing(outcome.get_result())


def left_behind(folder: str):
    return sorted(name for name in os.listdir(folder) if not REUSED.fullmatch(name))


def pytest_sessionfinish(session, exitstatus):
    private = os.environ.get("GROUNDED_TEST_TMPDIR")
    if not private or os.path.realpath(tempfile.gettempdir()) != os.path.realpath(private):
        return  # a shared temporary folder: other programs' files are not the tests' doing
    left = left_behind(private)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"the tests left {len(left)} things in the temporary folder {private}: "
                                + ", ".join(left[:20]) + (" ..." if len(left) > 20 else ""), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
