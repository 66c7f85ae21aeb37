"""Round schedulers: how each round's sparsification ratio rho_t and bandwidth split b_t are chosen.

A scheduler is one :class:`SchedulerEntry` in :data:`SCHEDULERS` (``run.scheduler``). The entry
declares what it decides and how the round runs; the math lives in :mod:`fedsim.tsfa`:

=======  ==========  ==================  =========  ==============================================
name     rho_t       b_t                 two-phase  offline rank plan
=======  ==========  ==================  =========  ==============================================
equal    fixed       B_total / K each    no         no (the default)
fixed    fixed       min-max latency     no         no
tsfa     Lyapunov    min-max latency     yes        yes (:mod:`fedsim.core.rank_plan`)
=======  ==========  ==================  =========  ==============================================

"fixed" rho is ``method.rho`` (0 for a method that does not sparsify). The min-max split is the
cvxpy allocator with its exact reference as fallback; the Lyapunov choice is drift-plus-penalty
over ``tsfa.rho_grid`` under the long-term budget ``tsfa.latency_budget_s``.

A two-phase round is what a deployment does when rho is not known in advance: the server
broadcasts the global adapter; clients train locally and report a few scalars (|D_k| and the
SOFT dropped-rank error at each rho of the grid); the server observes the channels g_k,t and
its queue Q_t, decides rho_t and b_t and sends them; clients sparsify at rho_t and upload. A
one-phase round trains and uploads in one message, and the band is split once the payloads are
known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fedsim.core import plugins

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from fedsim.core.config import Config
    from fedsim.tsfa.controller import Decision


class Scheduler(Protocol):
    """What :attr:`SchedulerEntry.build` returns and the engine drives, once per round: ``decide``
    (before the uploads), then ``update`` with the round's realised latency. Its state goes into
    every checkpoint. :class:`fedsim.tsfa.FixedRhoScheduler` and :class:`fedsim.tsfa.TsfaScheduler`
    are the built-in ones."""

    queue_s: float
    """The virtual queue Q_t of the latency budget, seconds (0 without a budget), for the records."""

    def decide(
        self,
        snr_per_hz: ArrayLike,
        compute_time_s: ArrayLike,
        payload_bits_by_rho: Mapping[float, ArrayLike],
        penalty_by_rho: Mapping[float, float | ArrayLike] | None = None,
    ) -> Decision:
        """rho_t and the band split b_t from a_k = p_k g_k / N0 (Hz), T_cmp_k (s) and S_k(rho) (bits)."""
        ...

    def update(self, round_latency_s: float) -> float:
        """Close the round with its realised latency T_t (s); returns Q_{t+1}."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


@dataclass(frozen=True, kw_only=True)
class SchedulerEntry:
    """One registered scheduler.

    Attributes
    ----------
    name : registry key (``run.scheduler``).
    description : one line for listings.
    decides_rho : rho_t is chosen every round (needs a method that sparsifies).
    two_phase : clients report before they upload (rho_t is decided between the two messages).
    plans_rank : the LoRA rank is chosen offline before the first round (all three False: a fixed-rho
        scheduler).
    build : ``build(cfg) -> Scheduler`` (:class:`Scheduler`; the built-in ones are in
        :mod:`fedsim.tsfa.controller`).
    """

    name: str
    description: str
    decides_rho: bool = False
    two_phase: bool = False
    plans_rank: bool = False
    build: Callable[[Config], Scheduler]


def _fixed_rho_scheduler(allocator: str) -> Callable[[Config], Scheduler]:
    def build(cfg: Config) -> Scheduler:
        from fedsim.core.methods import fixed_rho
        from fedsim.tsfa import FixedRhoScheduler, make_allocator

        t = cfg.tsfa
        return FixedRhoScheduler(
            fixed_rho(cfg.run.method, cfg.method.rho),
            make_allocator(allocator, cfg.num_sampled, cfg.channel.bandwidth_hz),
            t.latency_budget_s,
            t.deadline_s or None,
        )

    return build


def _tsfa_scheduler(cfg: Config) -> Scheduler:
    from fedsim.tsfa import TsfaScheduler, make_allocator

    t = cfg.tsfa
    allocator = make_allocator("minmax", cfg.num_sampled, cfg.channel.bandwidth_hz)
    return TsfaScheduler(allocator, t.latency_budget_s, t.v, t.rho_grid, t.penalty, t.deadline_s or None)


SCHEDULERS: dict[str, SchedulerEntry] = {
    e.name: e
    for e in (
        SchedulerEntry(name="equal", description="fixed rho, B_total / K each", build=_fixed_rho_scheduler("equal")),
        SchedulerEntry(
            name="fixed", description="fixed rho, min-max latency split", build=_fixed_rho_scheduler("minmax")
        ),
        SchedulerEntry(
            name="tsfa",
            description="TSFA: Lyapunov rho_t and min-max split, offline rank plan",
            decides_rho=True,
            two_phase=True,
            plans_rank=True,
            build=_tsfa_scheduler,
        ),
    )
}
"""The schedulers by name (``run.scheduler``)."""


def register_scheduler(entry: SchedulerEntry) -> SchedulerEntry:
    """Add ``entry`` to :data:`SCHEDULERS` (names are unique and lowercase); returns it."""
    if entry.name in SCHEDULERS or entry.name != entry.name.lower():
        raise ValueError(f"scheduler {entry.name!r}: names must be new and lowercase")
    SCHEDULERS[entry.name] = entry
    return entry


def get_scheduler(name: str) -> SchedulerEntry:
    """The scheduler ``name``: built in, registered, or installed (entry point group
    ``fedsim.schedulers``, :mod:`fedsim.core.plugins`); an unknown name is a ConfigError listing the known ones."""
    return plugins.resolve(SCHEDULERS, plugins.SCHEDULERS, name, "run.scheduler", SchedulerEntry)


def scheduler_names() -> list[str]:
    """Every usable scheduler name: registered ones, then installed ones (nothing imported)."""
    return plugins.names(SCHEDULERS, plugins.SCHEDULERS)
