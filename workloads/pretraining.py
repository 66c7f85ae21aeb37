"""The centralised pretraining loop the zoo's tiny bases share (equation-reasoner, rainbow-padding,
clip-memorisation's denoiser).

AdamW without weight decay under PyTorch's one-cycle learning-rate schedule peaking at ``lr``
after 5 % of the steps, gradients clipped to norm 1, one optimiser step per batch. A workload that
uses it passes this module to :func:`workloads.cache.source_digest`, so a change here makes new
cached bases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn


def train_steps(
    model: nn.Module,
    passes: Callable[[], Iterable[Any]],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    steps: int,
    lr: float,
    params: list[nn.Parameter] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` optimiser steps; the loss of each step.

    ``passes()`` gives one pass over the data as batches (an epoch; an endless generator of fresh
    batches serves too) and is called again until ``steps`` batches have been used; ``loss(model,
    batch)`` is the scalar to minimise. ``params`` (default: all of the model's) are the ones
    trained. The model is left in eval mode.
    """
    params = list(model.parameters()) if params is None else params
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        used = len(losses)
        for batch in passes():
            if len(losses) == steps:
                break
            value = loss(model, batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(value.detach()))
        if len(losses) == used:
            raise ValueError("pretraining data gave no batch")
    model.eval()
    return losses


def loss_summary(losses: list[float]) -> dict[str, Any]:
    """The cache statistics of a pretraining: steps, the first loss and the mean of the last 50."""
    return {
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
    }
