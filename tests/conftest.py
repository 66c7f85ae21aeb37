"""Fixtures shared by the whole suite (helpers live in tests/helpers/)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.runs import SMALL_RUN, run_fedsim


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, workload_cache) -> Path:
    """One 4-client, 2-round run through Flower and Ray, shared by the end-to-end tests.

    It runs with a temp folder of its own (``TMPDIR``), which it must leave empty: Ray's session
    folder is removed and torch's compile cache lives in the fedsim cache (``torchinductor``).
    """
    out = tmp_path_factory.mktemp("runs") / "small"
    tmp = Path(tempfile.mkdtemp(prefix="ft", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # torch sets it in this process once imported
            proc = run_fedsim([*SMALL_RUN, "--out", str(out), "--quiet"], env={"TMPDIR": str(tmp)})
        left = sorted(p.name for p in tmp.iterdir())
    finally:
        shutil.rmtree(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    assert left == [], f"the run left {left} in its temp folder"
    assert (Path(workload_cache) / "torchinductor").is_dir()
    return out


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def compiled_sources():
    """Byte-compile the project's own packages once, as installing a package does: the CPU limits of
    the refusal tests measure a refusal, not a fresh clone's first compilation of the modules it
    imports (which cost a first refusal 0.3 s of CPU)."""
    import compileall

    for package in ("fedsim", "workloads", "channels"):
        compileall.compile_dir(str(ROOT / package), quiet=1)


TEST_CACHE_ENV = "FEDSIM_TEST_CACHE"


@pytest.fixture(scope="session", autouse=True)
def workload_cache(request, tmp_path_factory):
    """The workload cache (pretrained bases, generated data) of every test and every run it starts.

    ``$FEDSIM_TEST_CACHE`` if set, else pytest's own cache folder (``.pytest_cache``), else a fresh
    temporary folder: entries are keyed by everything that determines them (the source code
    included) and verified on load, so a base pretrained by one test session serves the next one
    and both tiers of CI, and the user's own cache is never touched. No network: offline Hub.
    """
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = os.environ.get(TEST_CACHE_ENV) or (cache.mkdir("fedsim-cache") if cache else tmp_path_factory.mktemp("fc"))
    saved = {k: os.environ.get(k) for k in ("FEDSIM_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ["FEDSIM_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    yield str(root)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
