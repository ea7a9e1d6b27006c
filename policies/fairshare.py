"""Who goes next on a link: weighted fair share between tenants, then between activities.

Each link keeps one queue per (tenant, activity) "flow"; inside a flow, files
are ordered by priority with aging (``flow_score``).  When a link has room for
``n`` more transfers, :func:`pick` decides which flows they come from, by
stride scheduling (the deterministic cousin of weighted deficit round robin):
every tenant carries a *pass*; the waiting tenant with the lowest pass goes
next and its pass grows by ``1 / weight``.  Within the chosen tenant, its
activities are picked the same way.  A tenant that was idle rejoins at the
current virtual time, so it neither starves others with saved-up credit nor
waits behind their history.  Over any stretch where two tenants both wait,
their dispatch counts stay in the ratio of their weights (±1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

PRIORITY_MIN, PRIORITY_MAX = 1, 5
FLOW_SEPARATOR = "|"  # tenant names never contain it (transferd.config.TENANT_NAME_RE)
_VT = "\x00vt"  # key of a level's virtual time in the passes mapping


@dataclass(frozen=True)
class FairShareSettings:
    """The ``[fairshare]`` table: weights by tenant and by activity, and priority aging."""

    default_weight: float = 1.0
    tenants: Mapping[str, float] = field(default_factory=dict)
    activities: Mapping[str, float] = field(default_factory=dict)
    priority_aging_files: int = 10_000

    def tenant_weight(self, tenant: str) -> float:
        return self.tenants.get(tenant, self.default_weight)

    def activity_weight(self, activity: str) -> float:
        return self.activities.get(activity, self.default_weight)


def flow_name(tenant: str, activity: str) -> str:
    """The name of a (tenant, activity) flow, as the store keys its queue."""
    return f"{tenant}{FLOW_SEPARATOR}{activity}"


def split_flow(flow: str) -> tuple[str, str]:
    tenant, _, activity = flow.partition(FLOW_SEPARATOR)
    return tenant, activity


def flow_score(priority: int, seq: int, aging_files: int) -> int:
    """A file's score in its flow queue (lowest first); the store's Lua mirrors it.

    One priority level is worth ``aging_files`` places: a priority-5 file goes
    ahead of priority-4 files queued up to ``aging_files`` arrivals before it,
    and a file waiting longer than that goes first whatever keeps arriving.
    """
    p = max(PRIORITY_MIN - 1, min(9, priority))
    return seq - p * aging_files


@dataclass(frozen=True)
class Picks:
    """The flows to take the next files from, in order, and the passes after them."""

    flows: tuple[str, ...]
    passes: dict[str, float]


def pick(
    queued: Mapping[str, int],
    room: int,
    passes: Mapping[str, float],
    settings: FairShareSettings,
) -> Picks:
    """Choose the flows of the next ``room`` dispatches on one link.

    ``queued`` is flow name → files waiting; ``passes`` is what the previous
    call returned (empty at first).  A flow is never picked more often than it
    has files.
    """
    left = {f: n for f, n in queued.items() if n > 0}
    state = dict(passes)
    order: list[str] = []
    for _ in range(max(0, room)):
        tenants = sorted({split_flow(f)[0] for f in left})
        if not tenants:
            break
        tenant = _choose(tenants, "", state, settings.tenant_weight)
        activities = sorted(split_flow(f)[1] for f in left if split_flow(f)[0] == tenant)
        activity = _choose(
            activities, tenant + FLOW_SEPARATOR, state, settings.activity_weight
        )
        flow = flow_name(tenant, activity)
        order.append(flow)
        left[flow] -= 1
        if left[flow] == 0:
            del left[flow]
    # an idle flow rejoins at its level's clock anyway: forget it (bounded memory)
    waiting = {split_flow(f)[0] for f in queued}
    known = set(queued) | waiting | {_VT} | {t + FLOW_SEPARATOR + _VT for t in waiting}
    kept = {k: v for k, v in state.items() if k in known}
    return Picks(tuple(order), kept)


def _choose(
    names: Sequence[str], prefix: str, state: dict[str, float], weight_of: Callable[[str], float]
) -> str:
    """The lowest pass among ``names`` (ties by name); advances its pass and the level's clock."""
    vt = state.get(prefix + _VT, 0.0)
    best = min(names, key=lambda n: (max(state.get(prefix + n, vt), vt), n))
    start = max(state.get(prefix + best, vt), vt)
    state[prefix + best] = start + 1.0 / max(weight_of(best), 1e-9)
    state[prefix + _VT] = start
    return best
