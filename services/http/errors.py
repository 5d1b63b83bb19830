"""How failures become responses: 422 with field errors, 503 when the log fails; and ``invalid``,
the one way the API's own rules refuse a request.

Every 422 has the same shape: ``{"detail": [{"type", "loc", "msg", "input", "ctx"?}, ...]}``,
whatever refused the request (FastAPI's parameter and body validation, or a rule of the API).
This module must never hide a failure: a broken log is named, never answered as if all was well.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contracts.roundtrip import Unreadable
from contracts.values import json_problem
from events.log import LogError
from services.http.responses import JSONBytesResponse, json_response

__all__ = ["NotAnObject", "YAMLDecodeError", "error_item", "field_errors", "install_error_handlers",
           "invalid"]


class NotAnObject(json.JSONDecodeError):
    """The body is JSON, but not an object.

    A JSONDecodeError because that is what FastAPI turns into a 422 when reading a body; the
    error handler tells the two apart and names this one.
    """

    def __init__(self, found: str) -> None:
        super().__init__("the request body must be a JSON object", "", 0)
        self.found = found


class YAMLDecodeError(json.JSONDecodeError):
    """A YAML body that does not parse, at ``lineno``/``colno`` (1-based).

    A JSONDecodeError so that FastAPI, reading the body, answers it as the 422 it answers for
    malformed JSON; the error handler names it as YAML.
    """

    def __init__(self, msg: str, doc: str, pos: int, lineno: int, colno: int) -> None:
        super().__init__(msg, doc, pos)
        self.lineno, self.colno = lineno, colno


def invalid(errors: list[dict[str, Any]]) -> NoReturn:
    """Refuse the request with these field errors (422, nothing appended)."""
    raise RequestValidationError(errors)


def error_item(loc: tuple[str | int, ...], type_: str, msg: str, input_: Any = None) -> dict[str, Any]:
    """One 422 item, shaped as pydantic's."""
    return {"type": type_, "loc": list(loc), "msg": msg, "input": input_}


def field_errors(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """Pydantic errors as 422 items located under ``prefix``."""
    return [{**err, "loc": (*prefix, *err["loc"])} for err in exc.errors(include_url=False)]


# --- handlers -----------------------------------------------------------------------------------


# Errors about a credential written where a reference belongs (contracts.executors).
_SECRET_ERRORS = frozenset({"secret_literal", "secret_reference", "url_credentials"})
_SECRET_PLACES = frozenset({"agent_config", "agents"})  # where executor configurations are posted


def _item(err: dict[str, Any], cause: BaseException | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": err["type"], "loc": list(err["loc"]), "msg": err["msg"],
                            "input": err.get("input")}
    places = {p for p in item["loc"] if isinstance(p, str)}
    if item["type"] in _SECRET_ERRORS or places & _SECRET_PLACES:
        item["input"] = None  # an executor configuration may hold a refused secret: never echoed back
    if "ctx" in err:
        # A model validator's ctx holds the ValueError itself, which is not JSON.
        item["ctx"] = {k: v if isinstance(v, str | int | float | bool | None) else str(v)
                       for k, v in err["ctx"].items()}
    if item["type"] == "json_invalid":
        if isinstance(cause, NotAnObject):
            return {"type": "dict_type", "loc": ["body"], "msg": cause.msg, "input": cause.found}
        if isinstance(cause, YAMLDecodeError):
            item["type"] = "yaml_invalid"
            item["msg"] = f"YAML error: {cause.msg} (line {cause.lineno}, column {cause.colno})"
        elif isinstance(cause, json.JSONDecodeError):
            item["msg"] = f"JSON decode error: {cause.msg} (line {cause.lineno}, column {cause.colno})"
    elif item["type"] == "missing" and item["loc"] == ["body"]:
        item["msg"] = "a JSON object body is required"
    elif item["type"] in ("tuple_type", "list_type") and isinstance(item["input"], str):
        # "Input should be a valid tuple" says nothing to someone who sent "text" for ["text"].
        field = next((p for p in reversed(item["loc"]) if isinstance(p, str)), "the value")
        example = item["input"] if item["input"] else "text"
        item["msg"] = f'{field} must be a list of strings, e.g. ["{example}"]'
    return item


async def _invalid_request(request: Request, exc: Exception) -> JSONBytesResponse:
    assert isinstance(exc, RequestValidationError)
    items = [_item(err, exc.__cause__) for err in exc.errors()]
    try:
        return json_response({"detail": items}, 422)
    except TypeError:
        # The refused input itself is no JSON (an integer past 64 bits): echoed as text instead.
        for item in items:
            if json_problem(item["input"]) is not None:
                item["input"] = repr(item["input"])[:1000]
        return json_response({"detail": items}, 422)


async def _unreadable(request: Request, exc: Exception) -> JSONBytesResponse:
    # A command the contract accepted but no store could read back (ingest refused to wrap it).
    assert isinstance(exc, Unreadable)
    loc: list[str | int] = ["body", *exc.where.split(".")] if exc.where else ["body"]
    return json_response({"detail": [error_item(tuple(loc), "unreadable", str(exc))]}, 422)


async def _log_failed(request: Request, exc: Exception) -> JSONBytesResponse:
    # A corrupt or unreachable log is the server's problem, named precisely, never hidden.
    return json_response({"detail": str(exc)}, 503)


def install_error_handlers(app: FastAPI) -> None:
    """Render refused requests and log failures as the API's documented responses."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Unreadable, _unreadable)
    app.add_exception_handler(LogError, _log_failed)
