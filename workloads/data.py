"""Real data for any workload: ``workload.dataset`` through Hugging Face ``datasets``.

``workload.dataset`` is either

- a local file (``.csv``, ``.json``/``.jsonl``, ``.parquet``, ``.txt``), loaded with
  ``datasets.load_dataset("<format>", data_files=...)``;
- a local folder, loaded with ``datasets.load_dataset(folder)`` (split names come from the file
  names: ``train.csv``, ``test.csv``, ...);
- a Hugging Face Hub dataset, used when the machine is online: ``name`` or ``name:config``
  (``nyu-mll/glue:sst2``); ``owner/name`` that is not a dataset is retried as ``name`` with
  config ``owner``'s second part, so ``glue/sst2`` means ``load_dataset("glue", "sst2")``.

Every source goes through the same :func:`load_external` (pick splits, map columns, sample), so
the local-file tests exercise the code path that Hub datasets take. The result has the
canonical columns ``text`` and ``label`` that workloads read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.errors import ConfigError

if TYPE_CHECKING:  # a dataset name is checked without loading the datasets library
    from datasets import Dataset, DatasetDict

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
TEST_SPLITS = ("test", "validation", "valid", "dev")


def hub_candidates(name: str) -> list[tuple[str, str | None]]:
    """``(path, config)`` pairs to try for a Hub name, in order."""
    path, sep, config = name.partition(":")
    if sep:
        return [(path, config or None)]
    if name.count("/") == 1:
        owner, second = name.split("/")
        return [(name, None), (owner, second)]
    return [(name, None)]


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?(:[\w.-]+)?")


def check_dataset_name(name: str) -> None:
    """Cheap checks at configuration time, before anything runs.

    An existing path is a local dataset and must have a known file type. Anything else must read as
    a Hub name, ``name`` or ``owner/name`` with an optional ``:config``; a missing path (one that
    starts with ``.``, ``/`` or ``~``, or ends in a data-file suffix such as ``data/train.csv``)
    and a URL are errors.
    """
    p = Path(name).expanduser()
    if p.is_file() and p.suffix.lower() not in FILE_BUILDERS:
        raise ConfigError(
            f"workload.dataset={name!r}: unknown file type {p.suffix!r}; use one of {', '.join(FILE_BUILDERS)}"
        )
    if p.exists():
        files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.suffix.lower() in FILE_BUILDERS)
        if not files:
            raise ConfigError(f"workload.dataset={name!r}: the folder holds no data file ({', '.join(FILE_BUILDERS)})")
        for f in files:
            if (problem := _unreadable(f)) is not None:
                raise ConfigError(f"workload.dataset={name!r}: {f.name} {problem}")
        return
    if "://" in name:
        raise ConfigError(
            f"workload.dataset={name!r}: URLs are not accepted; download the file and give its local path"
        )
    if name.startswith((".", "/", "~")) or p.suffix.lower() in FILE_BUILDERS:
        raise ConfigError(f"workload.dataset={name!r}: no such file or folder")
    if not HUB_NAME.fullmatch(name):
        raise ConfigError(
            f"workload.dataset={name!r}: neither an existing file or folder nor a Hub dataset name "
            "(name or owner/name, optionally :config)"
        )


PEEK_BYTES = 1 << 16
"""What :func:`_unreadable` reads of a file: enough for a header and a first record."""


def _unreadable(f: Path) -> str | None:
    """Why ``f`` cannot be a data file of its type, from its first bytes (None when it may be).

    Catches what ``datasets`` would refuse only after seconds of imports: an empty file, a binary
    one under a text suffix (a NUL byte, or not UTF-8), a JSON Lines file whose first line is not
    a JSON object, a Parquet file without its magic bytes. The rest is checked when it is loaded.
    """
    import codecs
    import json

    if f.stat().st_size == 0:
        return "is empty"
    with f.open("rb") as fh:
        head = fh.read(PEEK_BYTES)
    if f.suffix.lower() == ".parquet":
        return None if head.startswith(b"PAR1") else "is not a Parquet file (no PAR1 magic)"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut character is fine
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    if "\x00" in text:
        return "is binary (a NUL byte), not text"
    if f.suffix.lower() == ".jsonl" and "\n" in text.lstrip():
        first = text.lstrip().split("\n", 1)[0]
        try:
            if not isinstance(json.loads(first), dict):
                return "line 1 is not a JSON object"
        except json.JSONDecodeError:
            return "line 1 is not JSON"
    return None


def datasets_cache() -> Path:
    """Where ``datasets`` keeps its Arrow files, downloads and locks: inside fedsim's cache
    (``$FEDSIM_CACHE/datasets``), never the user's Hugging Face cache."""
    from workloads.cache import cache_root

    return cache_root() / "datasets"


def _first_line(e: Exception) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _local_source(p: Path) -> tuple[tuple, dict, str] | None:
    """``load_dataset``'s arguments for a local file or folder, and what it must be; None for neither."""
    if p.is_file():
        builder = FILE_BUILDERS[p.suffix.lower()]
        kwargs = {"data_files": {"train": str(p)}, **({"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {})}
        return (builder,), kwargs, f"a {builder} file"
    if p.is_dir():
        return (str(p),), {}, "a folder of data files (train.csv, test.csv, ...)"
    return None


def open_dataset(name: str) -> DatasetDict:
    """The splits of ``workload.dataset``; an unusable name or unreadable file is a one-line ConfigError.

    Nothing is printed (no progress bars), and the Arrow files go to :func:`datasets_cache`.
    """
    from datasets import disable_progress_bars, load_dataset
    from datasets.utils import logging as datasets_logging

    check_dataset_name(name)
    disable_progress_bars()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # a file it cannot read is our one-line error
    cache_dir = str(datasets_cache())
    if (local := _local_source(Path(name).expanduser())) is not None:
        args, kwargs, what = local
        try:
            return load_dataset(*args, cache_dir=cache_dir, **kwargs)
        except Exception as e:  # empty, binary or malformed files: datasets, pyarrow and pandas each raise their own
            raise ConfigError(f"workload.dataset={name!r}: cannot be read as {what} ({_first_line(e)})") from None
    errors = []
    for path, config in hub_candidates(name):
        try:
            return load_dataset(path, config, cache_dir=cache_dir)
        except Exception as e:  # offline, unknown name, missing config: try the next reading
            errors.append(_first_line(e))
    raise ConfigError(
        f"workload.dataset={name!r}: not a local file or folder, and the Hugging Face Hub did not give it ({errors[-1]})"
    )


def _pick(columns: Sequence[str], wanted: str, candidates: Sequence[str], what: str, name: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"workload.{what}={wanted!r}: {name} has columns {', '.join(columns)}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise ConfigError(
        f"workload.{what}='': {name} has none of the usual columns ({', '.join(candidates)}); "
        f"set workload.{what} to one of {', '.join(columns)}"
    )


def _has_labels(split: Dataset, label: str) -> bool:
    """False for a split whose labels are hidden (GLUE test splits use -1)."""
    values = split[label][:100]
    return not all(isinstance(v, int) and v < 0 for v in values)


def load_external(
    name: str,
    *,
    seed: int,
    train_size: int,
    test_size: int,
    text_column: str = "",
    label_column: str = "",
    text_candidates: Sequence[str] = ("text", "sentence", "content", "review", "question"),
    label_candidates: Sequence[str] = ("label", "labels"),
) -> tuple[Dataset, Dataset]:
    """(train pool, test set) with columns ``text`` and ``label``, sampled with ``seed``.

    The train pool is ``train_size`` rows of the ``train`` split (or the only split), the test set
    ``test_size`` rows of the first of test/validation/valid/dev that has labels; without one,
    the test set is held out from the train split first. A ``ClassLabel`` column keeps its
    class names as ``label`` feature; string labels stay strings (the workload maps them).
    """
    splits = open_dataset(name)
    train_name = "train" if "train" in splits else next(iter(splits))
    train = splits[train_name]
    text = _pick(train.column_names, text_column, text_candidates, "text_column", name)
    label = _pick(train.column_names, label_column, label_candidates, "label_column", name)

    def canonical(d: Dataset) -> Dataset:
        d = d.select_columns([text, label])
        if text != "text":
            d = d.rename_column(text, "text")
        if label != "label":
            d = d.rename_column(label, "label")
        return d

    train = canonical(train).shuffle(seed=seed)
    test_name = next(
        (s for s in TEST_SPLITS if s in splits and s != train_name and _has_labels(splits[s], label)), None
    )
    if test_name is None:
        n_test = min(test_size, len(train) // 2)
        test, train = train.select(range(n_test)), train.select(range(n_test, len(train)))
    else:
        test = canonical(splits[test_name]).shuffle(seed=seed + 1)
    train = train.select(range(min(train_size, len(train))))
    test = test.select(range(min(test_size, len(test))))
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"workload.dataset={name!r}: needs rows to train and test on (got {len(train)}, {len(test)})")
    if len(set(train["label"][:10_000])) < 2:
        raise ConfigError(f"workload.dataset={name!r}: column {label!r} has a single value; training needs two or more")
    return train, test


def load_for_spec(spec, **candidates: Sequence[str]) -> tuple[Dataset, Dataset]:
    """:func:`load_external` for a workload's spec: ``workload.dataset`` and its columns, sized for
    every client's samples and the test set, sampled with the run's seed. ``candidates`` are the
    ``text_candidates`` / ``label_candidates`` the workload guesses columns from."""
    train, test = load_external(
        spec.dataset,
        seed=spec.seed,
        train_size=spec.num_clients * spec.samples_per_client,
        test_size=spec.test_samples,
        text_column=spec.text_column,
        label_column=spec.label_column,
        **candidates,
    )
    if len(train) < spec.num_clients:
        raise ConfigError(
            f"workload.dataset={spec.dataset!r}: {len(train)} training rows for run.clients={spec.num_clients}; "
            "every client needs at least one"
        )
    return train, test


def class_names(train: Dataset, test: Dataset) -> list[str]:
    """The label names: a ClassLabel's names, else the sorted distinct values of both splits."""
    from datasets import ClassLabel

    feature = train.features["label"]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = set(train["label"]) | set(test["label"])
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return [str(i) for i in range(max(values) + 1)]  # integer ids keep their meaning
    return sorted(str(v) for v in values)


def labels_to_ids(data: Dataset, names: list[str]) -> Dataset:
    """``label`` as integer class ids in ``names`` order (a ClassLabel column already is)."""
    from datasets import ClassLabel

    if isinstance(data.features["label"], ClassLabel):
        return data
    index = {n: i for i, n in enumerate(names)}
    ids = [index[str(v)] for v in data["label"]]
    return data.remove_columns("label").add_column("label", ids)
