"""Ids derived from client ids are longer than the ids themselves: a timer id is
``heartbeat:<agent id>``, a reactor's command id names the task and the attempt. With 200-character
client ids (the contracts' cap) they must still project, on every backend: PostgreSQL refuses a
value longer than a VARCHAR's length, and one such row would stop the projector at every start."""

from __future__ import annotations

import sqlalchemy as sa

from contracts import event_types as ev
from projections import ProjectionStore, Projector, tables

from .history import Story

LONG = "a" * 200


async def test_timer_and_command_ids_derived_from_200_character_ids_project(store: ProjectionStore) -> None:
    story = Story(pool="p" * 200)
    story.register(LONG)
    story.add(ev.TimerScheduled(timer_id=f"heartbeat:{LONG}", kind="heartbeat", delay_s=30, generation=1,
                                agent_id=LONG))
    story.add(ev.CommandRejected(command_type="FireTimer", code="UNKNOWN_AGENT", message="gone"),
              commandid=f"fire:{'p' * 200}:heartbeat:{LONG}:1")
    applied = await Projector(store).apply("events", 0, story.items())
    assert applied == len(story.envelopes)
    async with store.engine.connect() as conn:
        timer_ids = (await conn.execute(sa.select(tables.timers.c.timer_id))).scalars().all()
        command_ids = (await conn.execute(sa.select(tables.rejections.c.command_id))).scalars().all()
    assert timer_ids == [f"heartbeat:{LONG}"]
    assert command_ids == [f"fire:{'p' * 200}:heartbeat:{LONG}:1"]


async def test_a_read_model_with_capped_id_columns_is_rebuilt(store: ProjectionStore) -> None:
    """A database made by an earlier version (VARCHAR(200) ids) is found stale at start."""
    from projections.store import _stale_tables

    async with store.engine.begin() as conn:
        assert await conn.run_sync(_stale_tables) == []
        # (PostgreSQL: the store's schema is first on the search path.)
        await conn.execute(sa.text("ALTER TABLE timers RENAME TO timers_new"))
        await conn.run_sync(lambda c: sa.Table(
            "timers", sa.MetaData(),
            *[sa.Column(col.name, sa.String(200) if type(col.type) is sa.Text else col.type)
              for col in tables.timers.columns]).create(c))
        assert "timers" in await conn.run_sync(_stale_tables)
