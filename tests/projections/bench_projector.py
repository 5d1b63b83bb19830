"""Projector throughput: events/s applied in batches of 1,000 of the typical mix.

Run: .venv/bin/python -m tests.projections.bench_projector [READ_DB_URL or ""] [N_TASKS] [BATCH]
(default sqlite+aiosqlite in a temporary directory, 25,000 tasks = 100,000 events, batches of
1,000). Not a test: it measures, it does not assert.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from projections import ProjectionStore, Projector

from .history import throughput_mix


async def main(url: str, n_tasks: int, batch: int = 1000) -> None:
    store = ProjectionStore(url)
    await store.start()
    await store.reset()
    projector = Projector(store)
    items = list(enumerate(throughput_mix(n_tasks)))
    started = time.perf_counter()
    for i in range(0, len(items), batch):
        await projector.apply("events", 0, items[i : i + batch])
    elapsed = time.perf_counter() - started
    await store.close()
    print(f"{store.dialect}: {len(items):,} events in {elapsed:.2f} s = "
          f"{len(items) / elapsed:,.0f} events/s (batches of {batch:,})")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else f"sqlite+aiosqlite:///{tmp}/read.db"
        n_tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 25_000
        asyncio.run(main(url, n_tasks, int(sys.argv[3]) if len(sys.argv) > 3 else 1000))
