"""Fixtures shared by the whole suite (helpers live in tests/helpers/)."""

from pathlib import Path

import pytest

from tests.helpers.runs import SMALL_RUN, run_fedsim


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One 4-client, 2-round run through Flower and Ray, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("runs") / "small"
    proc = run_fedsim([*SMALL_RUN, "--out", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    return out
