"""Money that cannot overflow or drift, and prices as event-sourced configuration: the decider, given /
when / then (tests/gwt.py), and the bounds of the contracts."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from contracts import Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import ModelPrice
from contracts.money import (
    MAX_COST_USD,
    MAX_LIMIT_USD,
    MAX_PRICED_MODELS,
    MAX_SPEND_USD,
    MAX_TOKENS,
    to_micros,
)
from services.domain.prices import BUILTIN, BUILTIN_DEFAULT, Prices, cost_micros
from tests.gwt import build_state, given

A = e.AgentRegistered(agent_id="a", name="a", kind="generic", capacity=1)
POOL_BUDGET_1 = e.BudgetSet(scope="pool", scope_id="default", limit_usd=1.0)


def cost(cost_id: str, usd: float, agent_id: str = "a") -> e.CostRecorded:
    return e.CostRecorded(cost_id=cost_id, agent_id=agent_id, model="m", input_tokens=0, output_tokens=0,
                          cost_usd=usd)


def price(p_in: float, p_out: float) -> ModelPrice:
    return ModelPrice(input_per_1k=p_in, output_per_1k=p_out)


# -- exact sums ------------------------------------------------------------------------------------


def test_ten_costs_of_ten_cents_trip_a_one_dollar_budget() -> None:
    assert sum([0.1] * 10) != 1.0  # what a float sum did: 0.9999999999999999, never tripped
    nine = [cost(f"k{i}", 0.1) for i in range(9)]
    tenth = c.RecordCost(cost_id="k9", agent_id="a", model="m", cost_usd=0.1)
    given(A, POOL_BUDGET_1, *nine).when(tenth).then(
        cost("k9", 0.1),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1.0, spent_usd=1.0),
    ).then_state(lambda s: s.spent[("pool", "default")] == 1_000_000 and ("pool", "default") in s.exceeded)


def test_nine_costs_of_ten_cents_leave_the_budget_open() -> None:
    nine = [cost(f"k{i}", 0.1) for i in range(8)]
    ninth = c.RecordCost(cost_id="k8", agent_id="a", model="m", cost_usd=0.1)
    given(A, POOL_BUDGET_1, *nine).when(ninth).then(
        cost("k8", 0.1)
    ).then_state(lambda s: s.spent[("pool", "default")] == 900_000 and not s.exceeded)


def test_a_budget_set_at_what_ten_costs_spent_is_exceeded_at_once() -> None:
    ten = [cost(f"k{i}", 0.1) for i in range(10)]
    given(A, *ten).when(c.SetBudget(limit_usd=1)).then(
        e.BudgetSet(scope="pool", scope_id="default", limit_usd=1.0),
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=1.0, spent_usd=1.0),
    )


def test_amounts_are_rounded_to_the_micro_dollar() -> None:
    given(A).when(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=0.1234567)).then(
        cost("k", 0.123457)
    )
    given().when(c.SetBudget(limit_usd=2.0000004)).then(e.BudgetSet(scope="pool", scope_id="default",
                                                                    limit_usd=2.0))


def test_older_events_with_more_decimals_count_to_the_nearest_micro_dollar() -> None:
    state = build_state([A, cost("k1", 0.1000004), cost("k2", 0.2999996)])
    assert state.spent[("pool", "default")] == 400_000


def test_a_cost_may_take_the_pool_to_its_spending_cap_and_no_further() -> None:
    full = [cost(f"k{i}", MAX_COST_USD) for i in range(MAX_SPEND_USD // MAX_COST_USD - 1)]
    almost = (A, *full, cost("last", MAX_COST_USD - 1))
    given(*almost).when(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=1)).then(cost("k", 1))
    given(*almost).when(c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=1.000001)).rejects(
        Reason.COST_OUT_OF_RANGE, max_usd=MAX_SPEND_USD
    )


def test_a_priced_cost_above_the_largest_one_call_may_record_is_rejected() -> None:
    dear = e.PricesSet(models={"dear": price(1000, 1000)})
    given(A, dear).when(
        c.RecordCost(cost_id="k", agent_id="a", model="dear", input_tokens=MAX_TOKENS, output_tokens=1)
    ).rejects(Reason.COST_OUT_OF_RANGE, max_usd=MAX_COST_USD)
    # 1,000,000 tokens at 1,000 USD per 1K are exactly the largest cost.
    given(A, dear).when(
        c.RecordCost(cost_id="k", agent_id="a", model="dear", input_tokens=1_000_000)
    ).then(e.CostRecorded(cost_id="k", agent_id="a", model="dear", input_tokens=1_000_000, output_tokens=0,
                          cost_usd=MAX_COST_USD, priced_from_table=True))


# -- bounds of the contracts -----------------------------------------------------------------------


@pytest.mark.parametrize("usd", [1e308, math.inf, -math.inf, math.nan, MAX_COST_USD + 0.01, -0.01])
def test_a_cost_out_of_bounds_is_refused_naming_its_field(usd: float) -> None:
    with pytest.raises(ValidationError) as info:
        c.RecordCost(cost_id="k", agent_id="a", model="m", cost_usd=usd)
    assert [err["loc"] for err in info.value.errors()] == [("cost_usd",)]
    with pytest.raises(ValidationError):
        cost("k", usd)  # an event carrying it is no event either


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
def test_token_counts_are_bounded(field: str) -> None:
    c.RecordCost(cost_id="k", agent_id="a", model="m", **{field: MAX_TOKENS})
    with pytest.raises(ValidationError) as info:
        c.RecordCost(cost_id="k", agent_id="a", model="m", **{field: MAX_TOKENS + 1})
    assert [err["loc"] for err in info.value.errors()] == [(field,)]


@pytest.mark.parametrize("usd", [1e308, math.inf, math.nan, MAX_LIMIT_USD * 1.01])
def test_a_limit_out_of_bounds_is_refused_naming_its_field(usd: float) -> None:
    with pytest.raises(ValidationError) as info:
        c.SetBudget(limit_usd=usd)
    assert [err["loc"] for err in info.value.errors()] == [("limit_usd",)]


def test_a_spend_that_is_not_a_number_is_no_event() -> None:
    with pytest.raises(ValidationError):
        e.BudgetExceeded(scope="pool", scope_id="default", limit_usd=10, spent_usd=math.inf)


@pytest.mark.parametrize("body", [
    {"models": {"gpt-4": {"input_per_1k": -1, "output_per_1k": 0}}},
    {"models": {"gpt-4": {"input_per_1k": 1e308, "output_per_1k": 0}}},
    {"models": {"gpt-4": {"input_per_1k": 0.03}}},
    {"models": {" ": {"input_per_1k": 0.03, "output_per_1k": 0.06}}},
    {"default": {"input_per_1k": math.nan, "output_per_1k": 0}},
    {"strict": "sometimes"},
])
def test_bad_prices_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        c.SetPrices.model_validate(body)


# -- prices ----------------------------------------------------------------------------------------


def test_gpt_4_is_priced_out_of_the_box() -> None:
    record = c.RecordCost(cost_id="k", agent_id="a", model="gpt-4", input_tokens=1000, output_tokens=500)
    given(A).when(record).then(
        e.CostRecorded(cost_id="k", agent_id="a", model="gpt-4", input_tokens=1000, output_tokens=500,
                       cost_usd=0.06, priced_from_table=True)  # 0.03 + 0.5 * 0.06
    )


@pytest.mark.parametrize(("model", "listed"), [
    ("gpt-4", "gpt-4"),
    ("GPT-4", "gpt-4"),
    ("gpt-4-0613", "gpt-4"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("anthropic/claude-opus-4-5", "claude-opus-4-5"),
    ("models/gemini-1.5-pro-002", "gemini-1.5-pro"),
    ("meta-llama/Meta-Llama-3.1-70B-Instruct", "meta-llama-3.1-70b"),
    ("o3-mini-2025-01-31", "o3-mini"),
    ("gpt-4.5-preview", "gpt-4.5-preview"),
    ("gpt-45", None),  # a prefix counts only up to a separator
    ("mystery", None),
])
def test_a_model_is_found_by_name_provider_prefix_and_dated_suffix(model: str, listed: str | None) -> None:
    assert BUILTIN.match(model) == listed


def test_the_built_in_prices_users_bring_from_other_orchestrators() -> None:
    per_1k = 1_000_000_000
    assert BUILTIN.price_of("gpt-4") == (30 * per_1k // 1000, 60 * per_1k // 1000)
    assert BUILTIN.price_of("gpt-3.5-turbo") == (500_000, 1_500_000)  # 0.0005 / 0.0015 USD
    assert cost_micros(1000, 1000, BUILTIN.price_of("gpt-3.5-turbo") or (0, 0)) == 2000


def test_set_prices_merges_into_the_pools_prices() -> None:
    before = e.PricesSet(models={"house": price(0.5, 2.0), "gpt-4": price(0.02, 0.04)}, strict=True)
    given(before).when(c.SetPrices(models={"House-2": price(0.1234567891, 1), "gpt-4": None})).then(
        e.PricesSet(models={"house": price(0.5, 2.0), "house-2": price(0.123456789, 1)}, strict=True)
    ).then_state(lambda s: s.prices.price_of("gpt-4") == BUILTIN.price_of("gpt-4"))


def test_set_prices_changes_the_default_and_strictness_only_when_asked() -> None:
    before = e.PricesSet(default=price(1, 2), strict=True)
    given(before).when(c.SetPrices()).then(e.PricesSet(default=price(1, 2), strict=True))
    given(before).when(c.SetPrices(strict=False)).then(e.PricesSet(default=price(1, 2), strict=False))
    given(before).when(c.SetPrices(default=price(3, 4))).then(e.PricesSet(default=price(3, 4), strict=True))


def test_a_reset_goes_back_to_the_built_in_prices() -> None:
    before = e.PricesSet(models={"house": price(0.5, 2.0)}, default=price(1, 2), strict=True)
    given(before).when(c.SetPrices(reset=True)).then(e.PricesSet())
    given(before).when(c.SetPrices(reset=True, models={"x": price(1, 1)})).then(
        e.PricesSet(models={"x": price(1, 1)})
    )


def test_the_next_cost_uses_the_changed_price() -> None:
    changed = e.PricesSet(models={"gpt-4": price(0.01, 0.02)})
    given(A, changed).when(c.RecordCost(cost_id="k", agent_id="a", model="gpt-4-0613", input_tokens=1000,
                                        output_tokens=1000)).then(
        e.CostRecorded(cost_id="k", agent_id="a", model="gpt-4-0613", input_tokens=1000, output_tokens=1000,
                       cost_usd=0.03, priced_from_table=True)
    )


def test_a_model_in_no_table_is_priced_at_the_pools_default_unless_strict() -> None:
    record = c.RecordCost(cost_id="k", agent_id="a", model="house-llm", input_tokens=2000, output_tokens=1000)
    default_usd = 2 * BUILTIN_DEFAULT.input_per_1k + BUILTIN_DEFAULT.output_per_1k
    given(A).when(record).then_state(lambda s: s.spent[("pool", "default")] == to_micros(default_usd))
    given(A, e.PricesSet(default=price(0.001, 0.002))).when(record).then(
        e.CostRecorded(cost_id="k", agent_id="a", model="house-llm", input_tokens=2000, output_tokens=1000,
                       cost_usd=0.004, priced_from_table=True)
    )
    given(A, e.PricesSet(strict=True)).when(record).rejects(Reason.UNKNOWN_MODEL_PRICE, model="house-llm")
    # A cost sent with its amount needs no price, strict or not.
    given(A, e.PricesSet(strict=True)).when(
        c.RecordCost(cost_id="k", agent_id="a", model="house-llm", cost_usd=0.5)
    ).then(e.CostRecorded(cost_id="k", agent_id="a", model="house-llm", input_tokens=0, output_tokens=0,
                          cost_usd=0.5))


def test_a_pool_prices_at_most_so_many_models_of_its_own() -> None:
    full = e.PricesSet(models={f"m{i}": price(1, 1) for i in range(MAX_PRICED_MODELS)})
    given(full).when(c.SetPrices(models={"one-more": price(1, 1)})).rejects(Reason.INVALID_COMMAND)
    given(full).when(c.SetPrices(models={"m0": price(2, 2)})).then_state(
        lambda s: s.prices.price_of("m0") == (2_000_000_000, 2_000_000_000)
    )


def test_prices_come_from_the_log_alone() -> None:
    """Two pools with the same history price alike; the built-in table is the only other input."""
    history = [A, e.PricesSet(models={"gpt-4": price(0.01, 0.02)}, strict=True)]
    assert build_state(history).prices == build_state(history).prices == Prices(
        {"gpt-4": price(0.01, 0.02)}, None, True
    )
    assert build_state([A]).prices == BUILTIN
