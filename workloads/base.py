"""The workload interface: what a model-and-task pair must tell the simulator.

A workload is one module with one class. It declares

- a ``declaration`` (:mod:`workloads.options`, in a module that imports no torch): every option
  with its default, allowed values and meaning, the presets (named sizes; ``tiny`` trains in
  seconds on a CPU, larger ones are for GPUs), the options that must fit together and
  optionally the natural-partition column: a column of the train pool naming each row's
  client, for ``workload.partition = "natural"`` (a task's own split, e.g. one writer per client),
- ``primary_metric`` and ``higher_is_better``: the key of :meth:`Workload.evaluate` that the
  simulator tracks, and its direction (accuracy up; a loss, FID or perplexity down),
- ``lora_target_modules`` (and ``extra_trainable``, e.g. a classification head that is trained
  and uploaded dense beside the LoRA factors),
- how to build the base model (:meth:`build_base_model`): real pretrained weights that ship
  offline, or a base that fedsim pretrains once and caches (:mod:`workloads.cache`); never a
  download on the default path,
- the data (:meth:`build_data`): generated offline by default, or a real dataset named by
  ``workload.dataset`` (:mod:`workloads.data`),
- the loss (:meth:`loss`), the evaluation (:meth:`evaluate`) and the training FLOPs per sample
  (:meth:`flops_per_sample`) that the compute-time model uses.

The interface assumes no task shape: a masked diffusion LM (no causal LM head) or a
text-to-image model implements the same methods with its own loss and metrics
(``higher_is_better = False`` for FID).

Everything else (LoRA wrapping through peft, client partitions through flwr-datasets
partitioners, local training) is shared code in this module, so the engine never changes when a
workload is added. Workloads register in :mod:`workloads` or through the Python entry-point
group ``fedsim.workloads``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from fedsim.errors import ConfigError
from workloads.options import Declaration


@dataclass(frozen=True)
class WorkloadSpec:
    """What a workload instance is built from (a slice of the run configuration)."""

    preset: str
    seed: int
    num_clients: int
    samples_per_client: int
    test_samples: int
    partition: str
    dirichlet_alpha: float
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    dataset: str = ""
    """'' for the workload's generated data, else a local file/folder or a Hub name."""
    text_column: str = ""
    label_column: str = ""
    options: str = ""
    """Preset overrides, ``key=value`` pairs separated by commas (see :meth:`Workload.resolve_params`)."""


class Workload(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    """One line for ``fedsim workloads``."""
    declaration: ClassVar[Declaration]
    """Its options (default, allowed values, meaning), presets and natural-partition column, declared in
    a module that imports no torch (:mod:`workloads.options`), so a bad option is refused at once."""
    presets: ClassVar[dict[str, dict[str, Any]]]
    """Preset name -> parameters (from :attr:`declaration`); ``tiny`` is required and must train in seconds on a CPU."""
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    lora_target_modules: ClassVar[list[str]]
    extra_trainable: ClassVar[list[str]] = []
    label_column: ClassVar[str] = "label"
    """Column of the train pool that ``partition = "dirichlet"`` skews over."""
    natural_partition_column: ClassVar[str | None] = None
    """Column whose values 0..num_clients-1 name each row's client (from :attr:`declaration`)."""

    device: torch.device = torch.device("cpu")
    """Where the model lives and :meth:`batches` puts each batch (set by ``fedsim.core.training``)."""
    bf16: bool = False
    """bfloat16 autocast around the forward passes of training and evaluation (:meth:`autocast`)."""
    supports_gpu: ClassVar[bool] = True
    """False for a workload whose loss or evaluation builds CPU tensors of its own (it runs on CPU only)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "declaration" in cls.__dict__:  # what the declaration says, as class attributes
            cls.presets = cls.declaration.presets
            cls.natural_partition_column = cls.declaration.natural_partition_column

    def __init__(self, spec: WorkloadSpec):
        self.spec = spec
        self.params = self.resolve_params(spec.preset, spec.options)

    @classmethod
    def resolve_params(cls, preset: str, options: str = "") -> dict[str, Any]:
        """The preset's parameters with ``workload.options`` applied and checked (:meth:`Declaration.resolve`)."""
        return cls.declaration.resolve(cls.name, preset, options)

    # -- what a workload implements --------------------------------------------------------
    @abstractmethod
    def build_base_model(self) -> nn.Module:
        """The frozen base model (pretrained or cached), deterministic for the spec."""

    @abstractmethod
    def build_data(self) -> tuple[Dataset, Dataset]:
        """(train pool to partition across clients, server-side test set)."""

    @abstractmethod
    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """A batch of dataset rows (column -> list) to model inputs."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Metrics on ``data``; must contain :attr:`primary_metric`."""

    @abstractmethod
    def flops_per_sample(self) -> float:
        """Training FLOPs (forward + backward) per sample, for the compute-time model."""

    # -- optional ------------------------------------------------------------------------
    def memory_estimate(self, batch_size: int) -> dict[str, int] | None:
        """A client's training memory in bytes by part (weights, adapters, optimiser, activations at
        ``batch_size``) with their sum as ``total_bytes``, from the architecture alone, before the model
        is built; None (the default): not estimated. The simulator prints it when a run starts and
        refuses a run whose total exceeds the device's free memory (:meth:`memory_limit_bytes`)."""
        return None

    def memory_limit_bytes(self) -> int | None:
        """A limit the workload's options set for :meth:`memory_estimate`'s total (None: the device's free memory)."""
        return None

    # -- shared machinery ------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The base model with peft LoRA on :attr:`lora_target_modules`.

        Trainable parameters are the LoRA factors and the modules in :attr:`extra_trainable`.
        peft initialises A randomly and B = 0; the caller seeds the torch RNG around this call.
        """
        from peft import LoraConfig, get_peft_model

        base = self.build_base_model()
        for p in base.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=self.spec.lora_rank,
            lora_alpha=self.spec.lora_alpha,
            lora_dropout=self.spec.lora_dropout,
            target_modules=list(self.lora_target_modules),
            modules_to_save=list(self.extra_trainable) or None,
        )
        return get_peft_model(base, lora)

    def partition(self, train: Dataset) -> list[Dataset]:
        """Split the train pool into one partition per client (every client's; see :meth:`partitioner`)."""
        partitioner = self.partitioner(train)
        return [partitioner.load_partition(i) for i in range(self.spec.num_clients)]

    def partitioner(self, train: Dataset):
        """The flwr-datasets partitioner of the train pool; ``load_partition(i)`` is client i's data.

        Nothing is split until a partition is loaded, and a loaded partition is a view of the pool
        (row indices), so a process builds only the partitions of the clients it trains: with
        10,000 clients an actor never holds 10,000 datasets. Partition ``i`` is the same whether it
        is loaded alone or with the others.
        """
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

        n = self.spec.num_clients
        if self.spec.partition == "natural":
            column = self.natural_partition_column
            if column is None or column not in train.column_names:
                raise ConfigError(f"workload.partition='natural': {self.name} has no natural split of this data")
            found = sorted(set(train[column]))
            if found != list(range(n)):
                raise ConfigError(
                    f"workload.partition='natural': the data names clients {found[:3]}..{found[-1]}, "
                    f"not 0..{n - 1} (run.clients={n})"
                )
            partitioner = NaturalIdPartitioner(partition_by=column)  # sorted ids: partition i is client i
        elif self.spec.partition == "iid":
            partitioner = IidPartitioner(num_partitions=n)
        else:
            partitioner = DirichletPartitioner(
                num_partitions=n,
                partition_by=self.label_column,
                alpha=self.spec.dirichlet_alpha,
                min_partition_size=max(1, self.spec.samples_per_client // 4),
                self_balancing=True,
                seed=self.spec.seed,
            )
        partitioner.dataset = train
        return partitioner

    def batches(self, data: Dataset, batch_size: int, generator: torch.Generator | None) -> Iterator[dict]:
        """Mini-batches of ``data``, shuffled by ``generator`` (None: in order), on :attr:`device`.

        The shuffle and the collation run on the CPU (the same order on every device); only the
        finished batch's tensors move, and on the CPU nothing is copied.
        """
        n = len(data)
        order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
        for start in range(0, n, batch_size):
            yield self.place(self.collate(data[order[start : start + batch_size]]))

    def place(self, batch: dict) -> dict:
        """``batch`` with its tensors on :attr:`device`; on the CPU the batch itself, untouched."""
        return batch if self.device.type == "cpu" else to_device(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on :attr:`device` when :attr:`bf16`; otherwise nothing (float32 as before)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The trainable tensors (LoRA factors and extra modules) as float32 NumPy arrays, by name."""
    return {
        n: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Overwrite the trainable tensors in place; every trainable tensor must be present."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise KeyError(f"adapter state lacks {missing[:3]}")
    with torch.no_grad():
        for n, arr in state.items():
            params[n].copy_(torch.from_numpy(np.asarray(arr)))


def local_train(
    workload: Workload,
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    extra_loss=None,
) -> dict[str, float]:
    """Local AdamW on the trainable parameters; returns the mean training loss and step count.

    ``extra_loss(model) -> Tensor`` is added to every step's loss (the SOFT regulariser).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for batch in workload.batches(data, batch_size, generator):
            with workload.autocast():  # a no-op unless simulation.bf16; backward runs outside it
                loss = workload.loss(model, batch)
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    model.eval()
    return {"train_loss": total / max(steps, 1), "local_steps": float(steps)}
