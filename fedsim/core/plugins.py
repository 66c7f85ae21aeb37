"""Registry entries from installed packages: upload methods, schedulers and channel components.

A package adds its own through entry points in its ``pyproject.toml``::

    [project.entry-points."fedsim.methods"]
    mymethod = "mypkg.methods:MY_METHOD"            # an UploadMethod named "mymethod"

    [project.entry-points."fedsim.schedulers"]
    mysched = "mypkg.schedulers:MY_SCHEDULER"       # a SchedulerEntry named "mysched"

    [project.entry-points."fedsim.channels"]
    "pathloss.myloss" = "mypkg.channel:MyPathLoss"  # a component class: "<kind>.<name>"

After ``pip install``, ``--method mymethod``, ``--scheduler mysched`` and ``channel.pathloss =
"myloss"`` work from the command line: a name the built-in registries do not hold is looked up
here, in the driver before anything starts and in every Ray actor (each imports the entry point's
module on first use), so nothing has to be imported by hand. Built-in names win on a clash.
(Workloads have their own group, ``fedsim.workloads``, in :mod:`workloads`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from importlib.metadata import entry_points
from typing import Any

from fedsim.errors import ConfigError

METHODS = "fedsim.methods"
SCHEDULERS = "fedsim.schedulers"
CHANNELS = "fedsim.channels"


def installed(group: str) -> dict[str, str]:
    """name -> ``"module:attr"`` of every entry point of ``group`` (nothing imported)."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load(group: str, name: str, key: str, problem: Callable[[Any], str | None]) -> Any:
    """The object that entry point ``name`` of ``group`` names, or None when none is installed.

    A ConfigError naming the configuration ``key`` when its module fails to import or when
    ``problem(obj)`` says what is wrong with the object (None: nothing).
    """
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    where = f"{key}={name.rpartition('.')[2]!r}: the installed entry point {group} {name} = {found[0].value!r}"
    try:
        obj = found[0].load()
    except Exception as e:  # a broken plug-in is the user's input: one line, no traceback
        raise ConfigError(f"{where} failed to load: {type(e).__name__}: {e}") from None
    wrong = problem(obj)
    if wrong:
        raise ConfigError(f"{where} {wrong}")
    return obj


def resolve(registry: dict[str, Any], group: str, name: str, key: str, kind: type) -> Any:
    """``registry[name]``, after adding the installed entry point ``name`` of ``group`` to the
    registry when it lacks the name; a ConfigError naming ``key`` and listing the known names (built
    in and installed) when neither has it. The entry must be a ``kind`` whose ``name`` is ``name``."""
    if name not in registry:

        def problem(obj: Any) -> str | None:
            if not isinstance(obj, kind):
                article = "an" if kind.__name__[0] in "AEIOU" else "a"
                return f"is a {type(obj).__name__}, not {article} {kind.__name__}"
            return None if obj.name == name else f"is named {obj.name!r}; an entry point is named after its entry"

        found = load(group, name, key, problem)
        if found is not None:
            registry.setdefault(name, found)  # its module may have registered it on import
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"{key}={name!r}: must be one of {', '.join(names(registry, group))}") from None


def names(registry: dict[str, Any], group: str) -> list[str]:
    """Every usable name: the registry's, then the installed entry points' (nothing imported)."""
    return list({**registry, **installed(group)})


def channel_component(kind: str, name: str, key: str, keys: Collection[str]) -> bool:
    """Whether the ``channels`` registry of ``kind`` holds ``name``, after adding the installed entry
    point ``"<kind>.<name>"`` to it when there is one.

    A component is a dataclass whose fields are configuration keys of its section (``keys``, e.g.
    ``pathloss_intercept_db`` for ``channel.pathloss_intercept_db``): fedsim builds it from them.
    ``key`` is the configuration key that selects it, for the error.
    """
    from channels import REGISTRIES

    registry = REGISTRIES[kind]
    if name not in registry:
        found = load(CHANNELS, f"{kind}.{name}", key, lambda cls: _not_a_component(cls, keys))
        if found is not None:
            registry[name] = found
    return name in registry


def installed_channel_components() -> list[tuple[str, str]]:
    """(kind, name) of every installed channel component (nothing imported)."""
    return [tuple(ep.partition(".")[::2]) for ep in installed(CHANNELS)]


def _not_a_component(cls: Any, keys: Collection[str]) -> str | None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return f"is a {type(cls).__name__}, not a dataclass"
    unknown = [f.name for f in dataclasses.fields(cls) if f.name not in keys]
    return f"has fields that are no configuration keys of its section: {', '.join(unknown)}" if unknown else None
