"""The workload zoo: pluggable model-and-task pairs behind :class:`workloads.base.Workload`.

Built-in workloads register here; third-party packages add theirs through the entry-point
group ``fedsim.workloads`` (``name = "package.module:WorkloadClass"``), and they appear in
``fedsim workloads`` and ``--workload`` after ``pip install``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from fedsim.errors import ConfigError

if TYPE_CHECKING:  # the registry's names are read without importing torch
    from workloads.base import Workload
    from workloads.options import Declaration

ENTRY_POINT_GROUP = "fedsim.workloads"

_BUILTIN = {
    "text-classify": "workloads.text_classify:TextClassify",
    "equation-reasoner": "workloads.equation_reasoner:EquationReasoner",
    "clip-memorisation": "workloads.clip_memorisation:ClipMemorisation",
    "rainbow-padding": "workloads.rainbow_padding:RainbowPadding",
    "reversal-curse": "workloads.reversal_curse:ReversalCurse",
    "dapd": "workloads.dapd:Dapd",
    "instruct": "workloads.instruct:Instruct",
}

_DECLARATIONS = {name: f"{target.partition(':')[0]}_options:DECLARATION" for name, target in _BUILTIN.items()}
"""Each built-in workload's declaration lives in ``<its module>_options``, which imports no torch."""


def _load(target: str) -> Any:
    """The attribute that ``"module:attr"`` names (the module imported)."""
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def registry() -> dict[str, str]:
    """name -> "module:Class" for built-in and installed workloads (built-ins win on a clash)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **_BUILTIN}


def check_workload_name(name: str) -> str:
    """The ``"module:Class"`` registered under ``name``, else a ConfigError listing the known names.

    A built-in name is answered without scanning the installed packages' entry points (about 35 ms
    each time, and a configuration is checked many times: every run of a sweep file)."""
    if name in _BUILTIN:  # built-ins win on a clash anyway
        return _BUILTIN[name]
    known = registry()
    if name not in known:
        raise ConfigError(f"workload.name={name!r}: must be one of {', '.join(sorted(known))}")
    return known[name]


def get_workload_class(name: str) -> type[Workload]:
    """The workload class registered under ``name``; unknown names list the known ones."""
    return _load(check_workload_name(name))


def declaration(name: str) -> Declaration:
    """The options, presets and natural-partition column of workload ``name``.

    A built-in workload's comes from its light ``_options`` module, without importing torch; an
    installed workload's from its class.
    """
    check_workload_name(name)
    if name in _DECLARATIONS:
        return _load(_DECLARATIONS[name])
    return get_workload_class(name).declaration
