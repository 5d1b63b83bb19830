"""The reads of money: a pool's budgets, and the prices its costs are priced at.

``GET /v1/prices`` answers the effective prices: the built-in table
(``services.domain.prices``) with the pool's own changes over it, from the read model of its
last ``PricesSet``, so it answers the same on either runtime. Writes are ``PUT /v1/budgets`` and
``PUT /v1/prices`` (``services.http.writes``).

This module must never write anything and never price a call: the decider does.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from contracts.commands import ModelPrice
from projections import queries
from services.domain.prices import Prices
from services.http.audit_reads import AsOf, at
from services.http.deps import ModelRead
from services.http.read_schemas import Budget, Items
from services.http.reads import READ_RESPONSES
from services.http.responses import json_response

__all__ = ["router"]

router = APIRouter(tags=["reads"], responses=READ_RESPONSES)


class ListedPrice(BaseModel):
    """USD per 1,000 input and output tokens, and whose price it is."""

    input_per_1k: float
    output_per_1k: float
    source: Literal["built-in", "pool"]


class PriceTable(BaseModel):
    """The prices a cost without ``cost_usd`` is priced at: every model by its lower-case name (a
    model is matched case-insensitively, then by its name after a ``/``, then by its longest listed
    prefix), the price of a model in no table, and whether such a model is rejected instead."""

    models: dict[str, ListedPrice]
    default: ListedPrice
    strict: bool


@router.get("/v1/budgets", summary="The pool's budgets, with what is spent and left",
            response_model=Items[Budget])
async def get_budgets(read: ModelRead, as_of: AsOf) -> Response:
    return json_response({"items": await at(read, as_of, queries.budgets)})


@router.get("/v1/prices", summary="The model prices costs are priced at", response_model=PriceTable)
async def get_prices(read: ModelRead) -> Response:
    row = await queries.prices(read.service.store, read.pool)
    if row is None:
        return json_response(Prices().listing())
    models = {name: ModelPrice.model_validate(price) for name, price in row["models"].items()}
    default = None if row["default_price"] is None else ModelPrice.model_validate(row["default_price"])
    return json_response(Prices(models, default, row["strict"]).listing())
