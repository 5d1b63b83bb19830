"""Command handlers for the pool's resources: its limits, and the allocations agents hold within them.

Pure: each handler reads the state and returns events or raises ``Rejected``; it never changes
the state, does no I/O and reads no clock.
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decision import EPSILON, DeciderConfig, Rejected, agent_of
from services.domain.state import RESOURCE_NAMES, Allocation, PoolState


def set_limits(state: PoolState, cmd: c.SetResourceLimits, config: DeciderConfig) -> list[Payload]:
    """New limits may not fall below what is allocated, nor below the agents already active."""
    limits = (cmd.max_cpu_cores, cmd.max_memory_mb, cmd.max_disk_mb, cmd.max_network_mbps)
    over = [n for n, used, lim in zip(RESOURCE_NAMES, state.used, limits, strict=True)
            if used > lim + EPSILON]
    if cmd.max_agents is not None and state.active_agents() > cmd.max_agents:
        over.append("agents")
    if over:
        raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                       f"current allocations exceed the new limits for {over}",
                       over=over, used=dict(zip(RESOURCE_NAMES, state.used, strict=True)))
    return [e.ResourceLimitsSet(**cmd.model_dump())]


def allocate(state: PoolState, cmd: c.AllocateResources, config: DeciderConfig) -> list[Payload]:
    """An active agent reserves resources, within what the pool's limits leave free."""
    if cmd.allocation_id in state.allocations:
        raise Rejected(Reason.ALLOCATION_EXISTS, f"allocation {cmd.allocation_id!r} exists",
                       allocation_id=cmd.allocation_id)
    agent_of(state, cmd.agent_id)
    want = (cmd.cpu_cores, cmd.memory_mb, cmd.disk_mb, cmd.network_mbps)
    if state.limits is not None:
        over = {
            n: {"requested": w, "free": lim - used}
            for n, w, used, lim in zip(RESOURCE_NAMES, want, state.used, state.limits, strict=True)
            if used + w > lim + EPSILON
        }
        if over:
            raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                           f"allocation exceeds pool limits for {sorted(over)}",
                           allocation_id=cmd.allocation_id, over=over)
    return [e.ResourcesAllocated(**cmd.model_dump())]


def release(state: PoolState, cmd: c.ReleaseResources, config: DeciderConfig) -> list[Payload]:
    """An active allocation is given back."""
    alloc = state.allocations.get(cmd.allocation_id)
    if alloc is None:
        raise Rejected(Reason.UNKNOWN_ALLOCATION, f"no active allocation {cmd.allocation_id!r}",
                       allocation_id=cmd.allocation_id)
    return [released(alloc, None)]


def released(alloc: Allocation, reason: str | None) -> e.ResourcesReleased:
    """The event that gives ``alloc`` back (on release, or when its agent leaves)."""
    cpu, mem, disk, net = alloc.amounts
    return e.ResourcesReleased(allocation_id=alloc.allocation_id, agent_id=alloc.agent_id, cpu_cores=cpu,
                               memory_mb=mem, disk_mb=disk, network_mbps=net, reason=reason)
