"""Which executor class runs a configuration: one line per ``type``.

The classes are imported when first needed, so a process hosting only ``http_api`` executors
never imports the LLM or MCP SDKs. This module must never start anything.
"""

from __future__ import annotations

from contracts.executors import ExecutorConfig
from services.executors.base import Executor


def build_executor(config: ExecutorConfig) -> Executor:
    """A new, not yet started executor for ``config``: its calls in ``config.processes`` worker
    processes when that is set (``services.executors.processes``), else in this one."""
    if config.processes:
        from services.executors.processes import WorkerExecutor

        return WorkerExecutor(config)
    return build_in_process(config)


def build_in_process(config: ExecutorConfig) -> Executor:
    """A new, not yet started executor for ``config`` that calls from this process."""
    match config.type:
        case "http_api":
            from services.executors.http_api import HttpApiExecutor

            return HttpApiExecutor(config)
        case "ai_agent":
            from services.executors.ai_agent import AiAgentExecutor

            return AiAgentExecutor(config)
        case "mcp_server":
            from services.executors.mcp_server import McpServerExecutor

            return McpServerExecutor(config)
    raise ValueError(f"unknown executor type {config.type!r}")
