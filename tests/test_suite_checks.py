"""The suite's own checks (tests/suite_checks.py): a skip for a missing tool fails, a skip for
another reason stays a skip, and under bin/test a test that leaves something in the temporary
folder fails the run. Each runs pytest on a small test file of its own."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def run_pytest(folder: Path, tmp: Path, private: bool):
    (folder / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from suite_checks import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionfinish\n")
    env = {k: v for k, v in os.environ.items() if k != "GROUNDED_TEST_TMPDIR"}
    env["TMPDIR"] = str(tmp)
    if private:
        env["GROUNDED_TEST_TMPDIR"] = str(tmp)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir",
                           str(folder), f"--basetemp={tmp / 'pytest-of-someone'}", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def folders(tmp_path):
    """A folder for a small test suite, and one to be its temporary folder."""
    suite, tmp = tmp_path / "suite", tmp_path / "tmp"
    suite.mkdir()
    tmp.mkdir()
    return suite, tmp


def test_a_skip_for_a_missing_tool_fails_and_other_skips_stay_skips(folders):
    suite, tmp = folders
    (suite / "test_tools.py").write_text(
        "import pytest\n"
        "def test_speech():\n    pytest.skip('espeak-ng is not installed (bin/system-deps installs it)')\n"
        "def test_browser():\n    pytest.skip(\"Debian's chromium is not installed\")\n"
        "def test_cpu_feature():\n    pytest.skip('this torch build has no oneDNN')\n"
        "def test_fine():\n    assert True\n")
    result = run_pytest(suite, tmp, private=False)
    out = result.stdout
    assert result.returncode == 1, out
    assert "FAILED test_tools.py::test_speech" in out and "FAILED test_tools.py::test_browser" in out
    assert "a tool is missing" in out and "bin/system-deps" in out
    assert "SKIPPED [1] test_tools.py" in out and "oneDNN" in out and "1 passed" in out

    # a module skipped whole for a missing package is a collection error (pytest stops there)
    (suite / "test_tools.py").unlink()
    (suite / "test_package.py").write_text("import pytest\npytest.importorskip('no_such_package_here')\n"
                                           "def test_never():\n    pass\n")
    result = run_pytest(suite, tmp, private=False)
    assert result.returncode != 0 and "ERROR test_package.py" in result.stdout, result.stdout
    assert "a tool is missing" in result.stdout and "no_such_package_here" in result.stdout


def test_under_bin_test_a_file_left_in_the_temporary_folder_fails_the_run(folders):
    suite, tmp = folders
    (suite / "test_tidy.py").write_text(
        "import tempfile\n"
        "def test_tidy(tmp_path):\n    (tmp_path / 'x').write_text('pytest removes its own folders')\n"
        "    with tempfile.TemporaryDirectory() as d:\n        pass\n")
    clean = run_pytest(suite, tmp, private=True)
    assert clean.returncode == 0, clean.stdout
    (suite / "test_untidy.py").write_text(
        "import tempfile\ndef test_untidy():\n    tempfile.mkdtemp(prefix='forgotten-')\n")
    untidy = run_pytest(suite, tmp, private=True)
    assert untidy.returncode == 1 and "2 passed" in untidy.stdout, untidy.stdout
    assert "left 1 things in the temporary folder" in untidy.stdout and "forgotten-" in untidy.stdout
    shared = run_pytest(suite, tmp, private=False)  # a shared temporary folder is not checked
    assert shared.returncode == 0, shared.stdout
