"""The documentation site builds offline with ``mkdocs build --strict`` and opens on getting started.

Strict mode turns every warning into a failure: a broken link or anchor, a page missing from the
nav or a nav entry without a page, and an API reference page whose module does not import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


def test_the_site_builds_strictly_and_opens_on_getting_started(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = (site / "index.html").read_text()
    assert re.search(r"<h1[^>]*>Getting started", index), "the site's index is not the getting-started page"
    # the configuration reference is generated at build time from fedsim.config.describe_keys()
    from fedsim.config import describe_keys

    config_page = (site / "configuration" / "index.html").read_text()
    assert all(key in config_page for key, *_ in describe_keys())
    assert not (ROOT / "docs" / "configuration.md").exists()  # generated, never committed
    # no web fonts fetched by the built pages
    assert "fonts.googleapis.com" not in index
