"""The configuration reference page, generated from ``fedsim.core.config.describe_keys()``.

MkDocs runs this file as a hook (``hooks:`` in mkdocs.yml): ``on_files`` adds
``configuration.md`` to the site at build time, so the page is never committed and never
drifts from the code. ``python docs/gen_config.py`` prints the same page.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

PAGE = "configuration.md"

INTRO = """# Configuration reference

This page is generated at build time from `fedsim config`'s own data
(`fedsim.core.config.describe_keys()`), so it lists exactly the keys, defaults and ranges of the
installed code. `fedsim config` prints the same table in a terminal.

A run's configuration is built from the defaults, then the TOML file given with `--config`
(one table per section below), then `--set section.key=value` overrides; the shortcut options
(`--clients`, `--rounds`, `--clients-per-round`, `--seed`, `--method`, `--scheduler`,
`--workload`, ...) are `--set` overrides of the same keys. The resolved configuration is saved
as `config.toml` in the results folder. A wrong key or value is one line naming the key, the
value and what is allowed, exit code 2, and nothing is written.

```toml
# my.toml
[run]
clients = 20
rounds = 5

[channel]
radius_m = 250.0
```

```bash
fedsim run --config my.toml --set train.lr=1e-3
```
"""


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def config_page() -> str:
    """The whole page as Markdown: one table per configuration section."""
    from fedsim.core.config import RENAMED_KEYS, describe_keys

    rows = describe_keys()
    out = [INTRO]
    for section, keys in groupby(rows, key=lambda r: r[0].split(".", 1)[0]):
        out.append(f"\n## `[{section}]`\n")
        out.append("| key | default | allowed | meaning |")
        out.append("| --- | --- | --- | --- |")
        for key, default, allowed, doc in keys:
            out.append(f"| `{key}` | {_default(default)} | {_cell(allowed)} | {_cell(doc)} |")
    out.append(RENAMED_INTRO)
    out.append("| old name | new name |")
    out.append("| --- | --- |")
    out += [f"| `{old}` | `{new}` |" for old, new in RENAMED_KEYS.items()]
    return "\n".join(out) + "\n"


RENAMED_INTRO = """
## Renamed keys

These keys were renamed. The old names still work everywhere a key is read (configuration
files, `--set`, sweep axes, results folders written before the rename) and mean the new key;
fedsim prints one line per old name it read (`fedsim: note: soft.rho is now method.rho (the
old name still works)`). Giving both names of one key is an error.
"""


def on_files(files, config):  # MkDocs hook
    """Add the generated configuration page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=config_page()))
    return files


if __name__ == "__main__":
    print(config_page())
