"""``POST /v1/agents/test``: try an executor configuration once, without registering it.

The configuration is validated like any (a literal secret is a 422 that says how to reference
it), the executor is started in this process (its references resolved here), called once with
``test_action`` and ``test_parameters``, and closed. Nothing is appended to the log.

This module must never register an agent or append anything.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field

from contracts.executors import ExecutorConfig
from contracts.values import JSONObject
from services.executors.trial import try_executor
from services.http.deps import ServiceDep
from services.http.responses import Error, json_response

__all__ = ["router"]

router = APIRouter(tags=["executors"], responses={
    400: {"model": Error, "description": "The body could not be read as JSON."}})


class AgentTest(BaseModel):
    """An executor configuration and the one call to try it with."""

    model_config = {"extra": "forbid"}

    agent_config: ExecutorConfig
    test_action: str | None = Field(default=None, min_length=1, max_length=200)
    test_parameters: JSONObject = Field(default_factory=dict)


class AgentTestResult(BaseModel):
    """How the call went: ``response_time`` in seconds; on failure ``error``, ``error_code``,
    whether a retry could help and, when the target asked, after how many seconds."""

    agent_name: str
    success: bool
    response_time: float
    result: dict[str, Any] | None
    error: str | None
    error_code: str | None
    retryable: bool | None
    retry_after: float | None


@router.post("/v1/agents/test", summary="Try an executor configuration once, without registering it",
             response_model=AgentTestResult)
async def test_agent(body: Annotated[AgentTest, Body()], service: ServiceDep) -> Response:
    # Its references are resolved in this process, guarded: none may name agentbus's own secrets.
    return json_response(await try_executor(body.agent_config, body.test_action, body.test_parameters,
                                            guard=[service.settings.data_dir]))
