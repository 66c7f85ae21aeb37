"""A finished (or stopped) run read back for analysis: its workload and final global model.

The records are :func:`fedsim.core.results.read_rounds`'s and the summary is ``summary.json``; this module
adds what needs the workload built again (torch, the cached base), for notebooks and analyses.
Nothing here writes to the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.core.results import MARKER


def load_final_model(folder: str | Path, workload: str | None = None) -> tuple[Any, Any, int]:
    """A run's workload and its model with the last checkpointed global adapter: ``(workload,
    model, round)``, round 0 (the base, LoRA B = 0) when the folder holds no checkpoint.

    For notebooks and analyses of a finished (or stopped) ``fedsim run`` folder. The configuration
    is the folder's own ``config.toml``; the checkpoint's files are checked against their SHA-256
    (:func:`fedsim.core.checkpoint.load_checkpoint`); pretrained bases come from the cache (or are
    pretrained again, as in the run). ``workload``: refuse a run of another workload (ValueError).
    """
    from fedsim.core.checkpoint import load_checkpoint
    from fedsim.core.config import build_config, load_toml
    from fedsim.core.training import load_workload
    from workloads.base import load_trainable_state

    folder = Path(folder)
    cfg = build_config(load_toml(folder / MARKER, MARKER))
    if workload is not None and cfg.workload.name != workload:
        raise ValueError(f"{folder}: a {cfg.workload.name} run, not {workload}")
    loaded = load_workload(cfg)
    ckpt = load_checkpoint(folder)
    if ckpt is not None:
        load_trainable_state(loaded.model, ckpt.state)
    loaded.model.eval()
    return loaded.workload, loaded.model, ckpt.round if ckpt is not None else 0
