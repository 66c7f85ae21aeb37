"""Partitions are built per client, on first use: a process builds only the clients it trains."""

from __future__ import annotations

import pytest
from datasets import Dataset

from fedsim.core.training import LoadedWorkload
from tests.helpers.workloads import QUICK_BASES
from workloads import _BUILTIN
from workloads.base import WorkloadSpec
from workloads.text_classify import TextClassify


def spec(num_clients: int, partition: str, samples_per_client: int = 1) -> WorkloadSpec:
    return WorkloadSpec(
        preset="tiny",
        seed=3,
        num_clients=num_clients,
        samples_per_client=samples_per_client,
        test_samples=4,
        partition=partition,
        dirichlet_alpha=1.0,
        lora_rank=2,
        lora_alpha=4.0,
        lora_dropout=0.0,
    )


def pool(n: int) -> Dataset:
    return Dataset.from_dict({"text": [f"row {i}" for i in range(n)], "label": [i % 8 for i in range(n)]})


def test_client_9999_of_10000_is_built_alone_and_is_the_same_data(monkeypatch):
    workload = TextClassify(spec(10_000, "iid"))
    train = pool(10_000 * 2)
    loaded = LoadedWorkload(workload, model=None, train=train, test=pool(4))
    built = []
    partitioner_of = workload.partitioner

    def spying_partitioner(data):
        p = partitioner_of(data)
        load = p.load_partition
        p.load_partition = lambda i: (built.append(i), load(i))[1]
        return p

    monkeypatch.setattr(workload, "partitioner", spying_partitioner)
    part = loaded.partition(9999)
    assert built == [9999] and len(loaded._partitions) == 1
    assert part["text"] == ["row 19998", "row 19999"]  # the contiguous shard that the full split gives it
    assert loaded.partition(9999) is part and built == [9999]  # kept: not built again


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_a_partition_built_alone_equals_the_same_client_of_the_full_split(partition):
    workload = TextClassify(spec(20, partition, samples_per_client=16))
    train = pool(20 * 16)
    full = workload.partition(train)
    for cid in (0, 7, 19):
        alone = LoadedWorkload(workload, model=None, train=train, test=pool(4)).partition(cid)
        assert alone["text"] == full[cid]["text"]


def test_partitions_kept_per_process_are_bounded(monkeypatch):
    monkeypatch.setattr(LoadedWorkload, "PARTITIONS_KEPT", 3)
    loaded = LoadedWorkload(TextClassify(spec(10, "iid")), model=None, train=pool(10), test=pool(4))
    for cid in range(5):
        loaded.partition(cid)
    assert sorted(loaded._partitions) == [2, 3, 4]
    assert loaded.partition(9, keep=False)["text"] == ["row 9"] and 9 not in loaded._partitions


def test_a_split_the_partitioner_cannot_make_is_a_config_error_before_ray():
    """A Dirichlet split of 500 clients at alpha 0.02 cannot give every client its minimum share:
    one line naming workload.partition and run.clients, from the driver's own check."""
    from fedsim.core.checks import checked_config
    from fedsim.core.training import check_workload
    from fedsim.errors import ConfigError

    cfg = checked_config(
        {"run.clients": 500, "run.clients_per_round": 10, "workload.dirichlet_alpha": 0.02, "workload.preset": "tiny"}
    )
    with (
        pytest.warns(UserWarning),
        pytest.raises(ConfigError, match=r"workload.partition='dirichlet'.*run.clients=500"),
    ):
        check_workload(cfg)


@pytest.mark.parametrize("name", sorted(_BUILTIN))
def test_every_workload_s_default_configuration_passes_the_driver_s_checks(name):
    """``fedsim run --workload NAME`` with nothing else must run: the preset's own defaults (its
    partition and run shape) pass every check the driver makes before Ray starts, including the split
    of the default 50 clients. Only the base's pretraining is cut short (:data:`QUICK_BASES`)."""
    from fedsim.core.checks import checked_config
    from fedsim.core.training import check_workload, load_workload

    cfg = checked_config({"workload.name": name, "workload.options": QUICK_BASES.get(name, "")})
    check_workload(cfg)
    sizes = [len(load_workload(cfg).partition(k, keep=False)) for k in range(cfg.run.clients)]
    assert min(sizes) > 0 and len(sizes) == 50
