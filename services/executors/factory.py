"""Which executor class runs a configuration: one line per ``type``.

The classes are imported when first needed, so a process hosting only ``http_api`` executors
never imports the LLM or MCP SDKs. This module must never start anything.
"""

from __future__ import annotations

from contracts.executors import ExecutorConfig
from services.executors.base import Executor


def build_executor(config: ExecutorConfig) -> Executor:
    """A new, not yet started executor for ``config``."""
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
