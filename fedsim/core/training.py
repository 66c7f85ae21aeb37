"""A workload loaded in this process (model and data), local training and evaluation; no Flower.

ClientApps are re-created per message but run inside long-lived Ray actors; the base model and
data are built once per process here (keyed on the parts of the config they depend on), not
once per client call. Local training of one client is :func:`client_update`; :class:`WorkloadHost`
serves both halves of a round (the server's initial adapter, evaluation and what the rank plan
needs; the client's training and personal evaluation).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from fedsim.core.config import Config
from fedsim.core.device import select_device
from fedsim.core.methods import get_method
from fedsim.core.seeding import SERVER, torch_seed
from fedsim.errors import ConfigError
from fedsim.soft import lora_factor_pairs, orthogonality_penalty
from workloads import get_workload_class
from workloads.base import Workload, WorkloadSpec, load_trainable_state, local_train, trainable_state


def workload_spec(cfg: Config) -> WorkloadSpec:
    w = cfg.workload
    return WorkloadSpec(
        preset=w.preset,
        seed=cfg.run.seed,
        num_clients=cfg.run.clients,
        samples_per_client=w.samples_per_client,
        test_samples=w.test_samples,
        partition=w.partition,
        dirichlet_alpha=w.dirichlet_alpha,
        lora_rank=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        dataset=w.dataset,
        text_column=w.text_column,
        label_column=w.label_column,
        options=w.options,
    )


@dataclass
class LoadedWorkload:
    """A workload instance with its base model (adapters attached) and its train and test data."""

    workload: Workload
    model: nn.Module
    train: Dataset
    test: Dataset
    _partitioner: object | None = field(default=None, repr=False)
    _partitions: dict[int, Dataset] = field(default_factory=dict, repr=False)

    PARTITIONS_KEPT = 1024
    """Loaded partitions kept per process (the most recent); a partition is a view of the pool."""

    def partition(self, client_id: int, keep: bool = True) -> Dataset:
        """Client ``client_id``'s data, loaded on first use: only the clients this process trains.

        ``keep=False`` loads it without keeping it (the server's one pass over every client's size).
        """
        if client_id in self._partitions:
            return self._partitions[client_id]
        if self._partitioner is None:
            self._partitioner = self.workload.partitioner(self.train)
        data = self._partitioner.load_partition(client_id)
        if keep:
            if len(self._partitions) >= self.PARTITIONS_KEPT:
                del self._partitions[next(iter(self._partitions))]
            self._partitions[client_id] = data
        return data


_CACHE: dict[tuple, LoadedWorkload] = {}


def load_workload(cfg: Config) -> LoadedWorkload:
    """The process-wide loaded workload for this configuration, built on first use."""
    spec = workload_spec(cfg)
    key = (cfg.workload.name, spec)
    if key not in _CACHE:
        torch.set_num_threads(max(1, int(cfg.simulation.cpus_per_client)))
        workload = get_workload_class(cfg.workload.name)(spec)
        device = select_device(cfg)
        workload.device, workload.bf16 = device, cfg.simulation.bf16
        train, test = workload.build_data()  # first: unusable data is refused before a model is built or pretrained
        check_memory(workload, cfg)  # and a model that cannot fit, before its weights are read
        with torch.random.fork_rng():
            torch.manual_seed(torch_seed(cfg.run.seed, 0, SERVER, "init-adapter"))
            model = workload.build_model()
        model.eval()
        if device.type != "cpu":  # the CPU path stays exactly as before
            model.to(device)
        _CACHE.clear()  # one workload per process at a time: free the previous model
        _CACHE[key] = LoadedWorkload(workload, model, train, test)
    return _CACHE[key]


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new client may use on ``device``: the GPU's free memory, or the RAM the OS reports available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(workload: Workload, cfg: Config) -> dict[str, int] | None:
    """The workload's per-client memory estimate at ``train.batch_size`` (None when it gives none);
    a ConfigError when it exceeds the workload's own limit or the device's free memory."""
    estimate = workload.memory_estimate(cfg.train.batch_size)
    if estimate is None:
        return None
    limit = workload.memory_limit_bytes()
    where = "workload.options memory_limit_gb" if limit is not None else f"free on {workload.device.type}"
    limit = free_memory_bytes(workload.device) if limit is None else limit
    workload.memory = {**estimate, "limit_bytes": limit}
    if estimate["total_bytes"] > limit:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size}: {cfg.workload.name} needs about "
            f"{memory_text(estimate)} per client, more than the {limit / 1e9:.3g} GB {where} "
            "(lower train.batch_size or max_length, or turn on gradient_checkpointing)"
        )
    return estimate


def memory_text(estimate: dict[str, int]) -> str:
    """``'1.23 GB (weights 1.00, LoRA 0.01, optimiser 0.01, activations 0.21)'``."""
    parts = [("weights", "weights_bytes"), ("LoRA", "lora_bytes"), ("optimiser", "optimiser_bytes")]
    parts.append(("activations", "activations_bytes"))
    inner = ", ".join(f"{label} {estimate[key] / 1e9:.3f}" for label, key in parts)
    return f"{estimate['total_bytes'] / 1e9:.3f} GB ({inner})"


def check_workload(cfg: Config) -> None:
    """Build the workload's model and data in this process and check what only they can tell.

    A sparsifying ``run.method`` for a workload without LoRA targets, a ``workload.dataset`` whose
    files or columns do not fit, a split into ``run.clients``
    partitions that the partitioner cannot make (e.g. a Dirichlet split with more clients than
    its minimum partition size allows), and a ``lora.rank`` above the smallest dimension of an
    adapted layer, are one-line ConfigErrors. Run before anything is started or written; the
    loaded workload stays cached for the server's own use.
    """
    from fedsim.core.methods import split_state

    if get_method(cfg.run.method).sparsifies and not get_workload_class(cfg.workload.name).lora_target_modules:
        raise ConfigError(
            f"run.method={cfg.run.method!r}: needs LoRA factors, but workload {cfg.workload.name} adapts none "
            "(use run.method=ideal)"
        )
    loaded = load_workload(cfg)  # options, data, memory and model: their own one-line errors
    memory = getattr(loaded.workload, "memory", None)
    if memory is not None:
        print(
            f"fedsim: {cfg.workload.name}: per-client memory estimate {memory_text(memory)} at "
            f"train.batch_size={cfg.train.batch_size}; {memory['limit_bytes'] / 1e9:.1f} GB allowed",
            file=sys.stderr,
        )
    try:  # the partitioner assigns every row when the first partition is loaded
        loaded.partition(0, keep=False)
    except ValueError as e:
        raise ConfigError(
            f"workload.partition={cfg.workload.partition!r}: cannot split the data into run.clients={cfg.run.clients} "
            f"partitions ({' '.join(str(e).split())[:200]})"
        ) from None
    state = initial_state(cfg)
    pairs, _ = split_state(state)
    if pairs:
        smallest = min(min(state[a].shape[1], state[b].shape[0]) for a, b in pairs.values())
        if cfg.lora.rank > smallest:
            raise ConfigError(
                f"lora.rank={cfg.lora.rank}: must be at most {smallest}, the smallest dimension of the layers "
                f"{cfg.workload.name} adapts"
            )


def initial_state(cfg: Config) -> dict[str, np.ndarray]:
    """The global adapter of round 0 (LoRA A random, B = 0, head random), the same everywhere."""
    return trainable_state(load_workload(cfg).model)


@contextlib.contextmanager
def frozen(model: nn.Module, is_frozen: Callable[[str], bool]) -> Iterator[None]:
    """Within the block, the trainable parameters ``is_frozen`` names are not trained
    (``requires_grad`` False, so the optimiser never sees them); restored afterwards, because the
    model is shared by every client this process runs."""
    held = [p for name, p in model.named_parameters() if p.requires_grad and is_frozen(name)]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


def client_update(
    cfg: Config, client_id: int, round_: int, global_state: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Local training of one client from the global adapter; returns its adapter and metrics."""
    rt = load_workload(cfg)
    load_trainable_state(rt.model, global_state)
    data = rt.partition(client_id)
    gen = torch.Generator().manual_seed(torch_seed(cfg.run.seed, round_, client_id, "local-train"))
    method = get_method(cfg.run.method)
    extra_loss = None
    if method.regularised and cfg.method.lambda_orth > 0:
        lam = cfg.method.lambda_orth

        def extra_loss(model: nn.Module) -> torch.Tensor:
            return lam * orthogonality_penalty(lora_factor_pairs(model))

    t0 = time.perf_counter()
    with torch.random.fork_rng(), frozen(rt.model, method.is_frozen):
        torch.manual_seed(torch_seed(cfg.run.seed, round_, client_id, "dropout"))
        metrics = local_train(
            rt.workload,
            rt.model,
            data,
            epochs=cfg.train.local_epochs,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            generator=gen,
            extra_loss=extra_loss,
        )
    metrics["train_wall_s"] = time.perf_counter() - t0
    metrics["num_samples"] = float(len(data))
    return trainable_state(rt.model), metrics


def evaluate_state(cfg: Config, state: dict[str, np.ndarray]) -> dict[str, float]:
    """Server-side evaluation of an adapter on the workload's test set."""
    rt = load_workload(cfg)
    load_trainable_state(rt.model, state)
    with rt.workload.autocast():
        return rt.workload.evaluate(rt.model, rt.test)


def train_memory_bytes(model) -> int:
    """A lower bound on the memory that training ``model`` takes, in bytes: every parameter held at its
    dtype's size, and for each trainable one its gradient and AdamW's two moments in float32.
    Activations, which grow with the batch and the sequence, are not counted."""
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(held + 3 * 4 * trainable)


class WorkloadHost:
    """The workload as both halves of a round see it: what the round engine needs (its
    :class:`~fedsim.core.engine.Host`) and what a client needs (its
    :class:`~fedsim.core.client.ClientWorkload`: local training and evaluation), for any LoRA rank.

    Each method takes the configuration because the TSFA rank plan changes ``lora.rank`` after
    the run starts; the loaded workload for a configuration is cached per process.
    """

    def train(
        self, cfg: Config, client_id: int, round_: int, start: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return client_update(cfg, client_id, round_, start)

    def primary_metric(self, cfg: Config) -> str:
        return load_workload(cfg).workload.primary_metric

    def initial_state(self, cfg: Config) -> dict[str, np.ndarray]:
        return initial_state(cfg)

    def evaluate(self, cfg: Config, state: dict[str, np.ndarray]) -> dict[str, float]:
        return evaluate_state(cfg, state)

    def flops_per_sample(self, cfg: Config) -> float:
        return load_workload(cfg).workload.flops_per_sample()

    def train_memory_bytes(self, cfg: Config) -> int:
        """A lower bound on a client's training memory (:func:`train_memory_bytes`)."""
        return train_memory_bytes(load_workload(cfg).model)

    def partition_sizes(self, cfg: Config) -> list[int]:
        lw = load_workload(cfg)
        return [len(lw.partition(c, keep=False)) for c in range(cfg.run.clients)]
