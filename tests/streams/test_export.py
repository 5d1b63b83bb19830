"""``GET /v1/events/export``: lz4-frame NDJSON, line for line what ``agentbus events export`` writes,
streamed a page at a time, filtered by position and type; and ``curl | lz4cat | jq`` reads it."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import lz4.frame

from services.runtime.service import Service
from tests.streams.conftest import live, log_events, register, settled, submit, task

REPO = Path(__file__).resolve().parents[2]


def _cli_export(data_dir: Path, out: Path) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    subprocess.run([sys.executable, "-m", "services.cli", "events", "export", str(out),
                    "--data-dir", str(data_dir)], cwd=REPO, env=env, check=True, capture_output=True)
    return bytes(lz4.frame.decompress(out.read_bytes()))


async def test_export_is_the_cli_export_streamed(service: Service, tmp_path: Path) -> None:
    # Incompressible payloads: the stream is several megabytes on the wire, so it comes in pieces.
    await submit(service, register("a1"), *[task(f"t{i}", data={"x": secrets.token_hex(1000)})
                                            for i in range(1500)])
    await settled(service)
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=30) as client:
        async with client.stream("GET", "/v1/events/export") as resp:
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-lz4"
            chunks = [chunk async for chunk in resp.aiter_raw()]
        assert len(chunks) > 10
        body = bytes(lz4.frame.decompress(b"".join(chunks)))
        # Nothing is written meanwhile: the two exports see the same log.
        expected = await asyncio.to_thread(_cli_export, service.settings.data_dir, tmp_path / "cli.lz4")
        assert body == expected
        assert len(body.splitlines()) == len(await log_events(service))


async def test_export_filters_by_position_and_type(service: Service) -> None:
    await submit(service, register("a1"), *[task(f"t{i}") for i in range(20)])
    await settled(service)
    on_log = await log_events(service)
    async with live(service) as (base, _), httpx.AsyncClient(base_url=f"http://{base}", timeout=30) as client:

        async def export(**params: str | list[str]) -> list[dict[str, object]]:
            resp = await client.get("/v1/events/export", params=params)
            assert resp.status_code == 200, resp.text
            return [json.loads(line) for line in lz4.frame.decompress(resp.content).splitlines()]

        ids = [ev["id"] for _, _, ev in on_log]
        assert [ev["id"] for ev in await export(after="4", until="9")] == ids[5:10]
        assert [ev["id"] for ev in await export(after="0:4")] == ids[5:]
        types = ["TaskAssigned", "AgentRegistered"]
        assert [ev["id"] for ev in await export(type=types)] == [
            ev["id"] for _, _, ev in on_log if ev["type"] in types]
        assert await export(after=str(len(ids) - 1)) == []  # up to date: nothing new
        # A position the log has not reached (another log, one restored from an older backup).
        beyond = await client.get("/v1/events/export", params={"after": str(len(ids))})
        assert beyond.status_code == 409 and "beyond the end of the log" in beyond.json()["detail"]
        bad = await client.get("/v1/events/export", params={"until": "x"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "until"]
        empty = await client.get("/v1/events/export", params={"type": ""})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["query", "type"]


async def test_curl_lz4cat_jq_reads_it(service: Service) -> None:
    await submit(service, register("a1"), task("t1"))
    for tool in ("curl", "lz4cat", "jq"):
        assert shutil.which(tool), f"{tool} is needed for this test (apt-get install curl lz4 jq)"
    async with live(service) as (base, _):
        pipe = f"curl -sf 'http://{base}/v1/events/export?type=TaskSubmitted' | lz4cat | jq -c .data.task_id"
        proc = await asyncio.create_subprocess_shell(pipe, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and out.decode().split() == ['"t1"']
