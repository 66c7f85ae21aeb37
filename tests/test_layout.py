"""The import structure: no cycles among the project's modules, flwr only under fedsim/flower/, no
test module importing another, and the manual's record schema (docs/results.md) in step with the
typed records."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from fedsim.core.records import client_record_keys, round_record_keys

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedsim", "channels", "workloads")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (module level or inside functions)."""
    found = set()
    this = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known and name != this:
                found.add(name)
    return found


def test_no_import_cycles():
    mods = modules()
    graph = {m: imports(p, set(mods)) for m, p in mods.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle between layers
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not (d.startswith(m + ".") and ROOT.joinpath(*m.split(".")).is_dir())}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_flwr_is_imported_only_under_fedsim_flower():
    offenders = []
    for name, path in modules().items():
        if name.startswith("fedsim.flower"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            offenders += [f"{name}: {m}" for m in mods if m == "flwr" or m.startswith("flwr.")]
    assert offenders == []


def test_workloads_import_nothing_from_fedsim_but_its_errors():
    """The zoo depends on the workload interface (workloads.base, workloads.options) and fedsim's
    error type only: the simulator reads workloads, never the other way round."""
    mods = modules()
    offenders = [
        f"{name}: {dep}"
        for name, path in mods.items()
        if name.split(".")[0] == "workloads"
        for dep in imports(path, set(mods))
        if dep.split(".")[0] == "fedsim" and dep != "fedsim.errors"
    ]
    assert offenders == []


def test_both_halves_of_a_round_load_without_flwr():
    """The round engine and the client's half import no flwr, not even through another module."""
    code = "import sys, fedsim.core.engine, fedsim.core.client; print(sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers/ (or fixtures), never in a test module."""
    offenders = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert offenders == []


def docs_section(page: str, title: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    start = text.index(title)
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


def test_documented_schema_lists_the_record_fields():
    section = docs_section("results.md", "### `rounds.jsonl` record")
    table_keys = []
    for line in section.splitlines():
        if line.startswith("| `"):
            table_keys += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    assert sorted(table_keys) == sorted(round_record_keys())
    client_part = section[section.index("Per-client record") :]
    paragraph = client_part.split("\n\n")[0].split("Two runs with the same seed")[0]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph))
    assert listed == set(client_record_keys())


def test_tests_import_helpers_not_other_test_modules():
    """Shared test code lives in tests/helpers/ (or is a conftest fixture): a test module or a
    conftest imported by another module would run or collect twice and hide who owns the code."""
    offending = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                last = name.rsplit(".", 1)[-1]
                if last.startswith("test_") or last == "conftest":
                    offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []


def test_layers_core_flower_app():
    """fedsim.core (and the paper's math, fedsim.soft and fedsim.tsfa) knows neither Flower's
    adapters nor the application; the adapters do not know the application; the math imports
    nothing else of fedsim."""
    mods = modules()
    allowed = {
        "fedsim.core": ("fedsim.core", "fedsim.errors", "fedsim.soft", "fedsim.tsfa"),
        "fedsim.flower": ("fedsim.flower", "fedsim.core", "fedsim.errors", "fedsim.soft", "fedsim.tsfa"),
        "fedsim.soft": ("fedsim.soft",),
        "fedsim.tsfa": ("fedsim.tsfa",),
    }
    offenders = []
    for name, path in mods.items():
        layer = next((layer for layer in allowed if name == layer or name.startswith(layer + ".")), None)
        if layer is None:
            continue
        for dep in imports(path, set(mods)):
            if dep.startswith("fedsim") and dep != "fedsim" and not dep.startswith(allowed[layer]):
                offenders.append(f"{name} imports {dep}")
    assert offenders == []
    assert sorted(p.name for p in (ROOT / "fedsim").glob("*.py")) == ["__init__.py", "__main__.py", "errors.py"]
