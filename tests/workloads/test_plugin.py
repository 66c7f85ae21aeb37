"""A third-party workload: pip-installed from a temporary folder, found through the entry point."""

import os
import subprocess
import sys
import textwrap

import pytest

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsim-toy-workload"
version = "0.0.1"

[project.entry-points."fedsim.workloads"]
toy-parity = "toy_workload:ToyParity"

[tool.setuptools]
py-modules = ["toy_workload"]
"""

MODULE = '''
"""toy-parity: is the number of ones in 8 bits above 4? A 2-layer MLP with LoRA on its hidden layer."""
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads.base import Workload
from workloads.options import Declaration, Option, Range


class ToyParity(Workload):
    name: ClassVar[str] = "toy-parity"
    description: ClassVar[str] = "Third-party test workload: majority of 8 bits with a small MLP"
    declaration: ClassVar[Declaration] = Declaration({"hidden": Option(32, Range(2, 1024), "hidden width")})
    primary_metric: ClassVar[str] = "accuracy"
    lora_target_modules: ClassVar[list[str]] = ["hidden"]
    extra_trainable: ClassVar[list[str]] = ["classifier"]

    def build_base_model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.spec.seed)
            return _Net(self.params["hidden"])

    def build_data(self):
        def make(n, seed):
            x = np.random.default_rng(seed).integers(0, 2, size=(n, 8))
            return Dataset.from_dict({"x": x.tolist(), "label": (x.sum(1) > 4).astype(int).tolist()})

        return make(self.spec.num_clients * self.spec.samples_per_client, self.spec.seed), make(
            self.spec.test_samples, self.spec.seed + 1
        )

    def collate(self, rows):
        return {"x": torch.tensor(rows["x"], dtype=torch.float32), "y": torch.tensor(rows["label"])}

    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    @torch.no_grad()
    def evaluate(self, model, data):
        batch = self.collate(data[:])
        return {"accuracy": float((model(batch["x"]).argmax(-1) == batch["y"]).float().mean())}

    def flops_per_sample(self) -> float:
        h = self.params["hidden"]
        return 6.0 * (8 * h + h * h + 2 * h)


class _Net(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.inp, self.hidden, self.classifier = nn.Linear(8, h), nn.Linear(h, h), nn.Linear(h, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.hidden(torch.relu(self.inp(x)))))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The toy package installed with pip into its own folder (not the venv)."""
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (pkg / "toy_workload.py").write_text(MODULE)
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
        + ["--target", str(target), str(pkg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(p.name.endswith(".dist-info") for p in target.iterdir())
    return target


def fedsim(site, *args, timeout=600):
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow  # the fixture pip-installs a package (about 15 s)
def test_installed_workload_is_listed(site):
    proc = fedsim(site, "workloads")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") >= 4}
    assert {"toy-parity", "text-classify", "equation-reasoner"} <= set(lines)
    assert "majority of 8 bits" in lines["toy-parity"] and "accuracy" in lines["toy-parity"]


@pytest.mark.slow
def test_installed_workload_runs(site, tmp_path):
    out = tmp_path / "o"
    proc = fedsim(
        site,
        *("run", "--workload", "toy-parity", "--clients", "2", "--rounds", "1", "--clients-per-round", "2"),
        *("--out", str(out), "--quiet", "--set", "workload.samples_per_client=16", "--set", "workload.test_samples=32"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 1
