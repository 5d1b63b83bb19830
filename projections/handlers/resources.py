"""Resource rows: the pool's limits and the allocations agents hold against them."""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers.registry import Registry
from projections.loading import ALLOCATION

handlers = Registry()


@handlers.on(ev.ResourceLimitsSet)
def _resource_limits_set(b: Batch, env: Envelope, d: ev.ResourceLimitsSet) -> None:
    b.limits.put(
        (env.pool,),
        {
            "pool": env.pool,
            "max_cpu_cores": d.max_cpu_cores,
            "max_memory_mb": d.max_memory_mb,
            "max_disk_mb": d.max_disk_mb,
            "max_network_mbps": d.max_network_mbps,
            "max_agents": d.max_agents,
            "updated_at": env.time,
        },
    )


@handlers.on(ev.ResourcesAllocated, reads=(ALLOCATION,))
def _resources_allocated(b: Batch, env: Envelope, d: ev.ResourcesAllocated) -> None:
    key = (env.pool, d.allocation_id)
    existing = b.allocations.rows.get(key)
    # The decider lets an allocation id be used again once released.
    if existing is not None and existing["status"] == "active":
        raise b.fail(f"allocation {d.allocation_id!r} is already active")
    b.allocations.put(
        key,
        {
            "pool": env.pool,
            "allocation_id": d.allocation_id,
            "agent_id": d.agent_id,
            "cpu_cores": d.cpu_cores,
            "memory_mb": d.memory_mb,
            "disk_mb": d.disk_mb,
            "network_mbps": d.network_mbps,
            "status": "active",
            "allocated_at": env.time,
            "released_at": None,
        },
    )


@handlers.on(ev.ResourcesReleased, reads=(ALLOCATION,))
def _resources_released(b: Batch, env: Envelope, d: ev.ResourcesReleased) -> None:
    key = (env.pool, d.allocation_id)
    row = b.allocations.rows.get(key)
    if row is None or row["status"] != "active":
        raise b.fail(f"allocation {d.allocation_id!r} is not active")
    row.update(status="released", released_at=env.time)
    b.allocations.touch(key)
