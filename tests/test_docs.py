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
    # the configuration reference is generated at build time from fedsim.core.config.describe_keys()
    from fedsim.core.config import describe_keys

    config_page = (site / "configuration" / "index.html").read_text()
    assert all(key in config_page for key, *_ in describe_keys())
    assert not (ROOT / "docs" / "configuration.md").exists()  # generated, never committed
    # no web fonts fetched by the built pages
    assert "fonts.googleapis.com" not in index


def test_results_tables_are_produced_by_fedsim_report_or_marked_pasted():
    """Every ``<!-- table: experiments/X.toml -->`` block names an existing sweep file and is closed; a
    closing digest matches the table (a produced table edited by hand fails), and a table without one
    says in its marker that it was pasted. Blocks of ``benchmarks/*.py`` scripts name an existing script."""
    from fedsim.app.report import table_blocks, table_digest

    problems = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in table_blocks(page.read_text()):
            where = f"{page.relative_to(ROOT)}:{block.start + 1}: {block.source}"
            script = block.source.startswith("benchmarks/") and block.source.endswith(".py")
            sweep = block.source.startswith("experiments/") and block.source.endswith(".toml")
            if not (script or sweep):
                problems.append(f"{where}: neither an experiments/*.toml file nor a benchmarks/*.py script")
            elif not (ROOT / block.source).is_file():
                problems.append(f"{where}: no such file")
            elif block.end is None:
                problems.append(f"{where}: no <!-- /table --> line")
            elif sweep and block.digest is not None and block.digest != table_digest(block.body):
                problems.append(f"{where}: the table differs from what fedsim report --into wrote (edited by hand?)")
            elif sweep and block.digest is None and not block.pasted:
                problems.append(f"{where}: pasted; regenerate with fedsim report --into, or mark it (pasted; ...)")
    assert not problems, "\n".join(problems)
