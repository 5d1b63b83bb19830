"""Tokens-per-minute limits reserve a model call's estimate when it is assigned and settle it when
its usage is recorded: ``estimate_tokens``, bursts spread out by estimate, settlement and give-back
freeing tokens early, and a view rebuilt from the log holding the same buckets as the live one.

Through the real decider, coordinator and timers on a simulated clock (``tests.unit.fleet.World``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from contracts import commands as c
from contracts import event_types as e
from contracts.money import MAX_TOKENS
from services.coordination.coordinator import PoolView
from services.coordination.ratelimit import (
    DEFAULT_MAX_TOKENS,
    Bucket,
    RateLimiter,
    estimate_tokens,
    max_tokens_default,
)
from tests.unit.fleet import World

HOUR = 3600
MODEL = "gpt-x"


# -- estimate_tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "default", "expected"),
    [
        (None, 1000, 1000),
        ({}, 700, 700),
        ({"prompt": "a" * 40}, 1000, 10 + 1000),
        ({"prompt": "a" * 41}, 1000, 11 + 1000),  # rounded up
        ({"prompt": "a" * 3, "max_tokens": 50}, 1000, 1 + 50),
        ({"prompt": "a" * 8, "system": "s" * 8, "max_tokens": 10}, 1000, 4 + 10),
        ({"system": [{"type": "text", "text": "s" * 12}], "max_tokens": 1}, 9, 3 + 1),
        (
            {
                "system": "y" * 4,
                "messages": [
                    {"role": "user", "content": "u" * 20},
                    {"role": "assistant", "content": [{"type": "text", "text": "t" * 8},
                                                      {"type": "image_url", "image_url": {"url": "x" * 99}}]},
                    {"role": "user", "content": ["p" * 4]},
                ],
                "max_tokens": 100,
            },
            1000,
            (4 + 20 + 8 + 4) // 4 + 100,
        ),
        # max_tokens only counts as a positive integer; else the agent's default.
        ({"max_tokens": 0}, 300, 300),
        ({"max_tokens": -5}, 300, 300),
        ({"max_tokens": True}, 300, 300),
        ({"max_tokens": "100"}, 300, 300),
        ({"max_tokens": 1.5}, 300, 300),
        ({"max_tokens": 10**400}, 300, MAX_TOKENS),
        # Any JSON: what is not text of a known field counts nothing.
        ([1, 2, 3], 300, 300),
        ("a prompt as a bare string", 300, 300),
        ({"prompt": 12345, "system": None, "messages": {"role": "user"}}, 300, 300),
        ({"messages": [None, 3, "a" * 8, {"content": 7},
                       {"content": [None, {"text": 5}, {"text": "b" * 4}]}]}, 300, 3 + 300),
    ],
)
def test_estimate_tokens(parameters: Any, default: int, expected: int) -> None:
    assert estimate_tokens(parameters, default) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["prompt", "system", "messages", "content", "text", "max_tokens",
                                       "role", "type"]) | st.text(max_size=5), inner, max_size=5),
    max_leaves=25,
)


@given(parameters=_json, default=st.integers(1, 10_000), extra=st.text(min_size=1, max_size=50))
@settings(max_examples=300)
def test_estimate_tokens_takes_any_json_and_grows_with_the_prompt(parameters: Any, default: int,
                                                                   extra: str) -> None:
    estimate = estimate_tokens(parameters, default)
    assert isinstance(estimate, int) and estimate >= 1
    if isinstance(parameters, dict) and isinstance(parameters.get("prompt"), str):
        longer = {**parameters, "prompt": parameters["prompt"] + extra}
        assert estimate <= estimate_tokens(longer, default) <= estimate + math.ceil(len(extra) / 4)


def test_what_an_agent_reserves_when_a_task_names_no_max_tokens() -> None:
    assert max_tokens_default({"model": MODEL, "max_tokens": 512}) == 512
    assert max_tokens_default({"model": MODEL}) == DEFAULT_MAX_TOKENS
    assert max_tokens_default({"model": MODEL, "max_tokens": "512"}) == DEFAULT_MAX_TOKENS
    assert max_tokens_default({"model": MODEL, "max_tokens": False}) == DEFAULT_MAX_TOKENS
    assert max_tokens_default({"max_tokens": 64}) == 64
    assert max_tokens_default({}) is None  # calls no model we know of: nothing reserved
    assert max_tokens_default({"model": 3}) is None


# -- a pool of model-calling agents ----------------------------------------------------------------


def llm(agent_id: str, model: str = MODEL, max_tokens: int | None = 500, capacity: int = 10,
        **kw: Any) -> c.RegisterAgent:
    """An agent that calls ``model`` (as an ai_agent executor registers)."""
    meta: dict[str, Any] = {"model": model}
    if max_tokens is not None:
        meta["max_tokens"] = max_tokens
    return c.RegisterAgent(agent_id=agent_id, name=agent_id, capacity=capacity, metadata=meta,
                           heartbeat_timeout_s=HOUR, **kw)


def call(task_id: str, prompt_chars: int = 400, **params: Any) -> c.SubmitTask:
    """A task whose model call has a prompt of ``prompt_chars`` characters (100 tokens by default)."""
    return c.SubmitTask(task_id=task_id, type="chat", parameters={"prompt": "x" * prompt_chars, **params})


def deferrals(w: World) -> list[e.TaskDeferred]:
    return [x for x in w.events(e.TaskDeferred) if isinstance(x, e.TaskDeferred)]


def assignments(w: World) -> list[e.TaskAssigned]:
    return [x for x in w.events(e.TaskAssigned) if isinstance(x, e.TaskAssigned)]


def holder(w: World, task_id: str) -> str | None:
    return w.state.tasks[task_id].agent_id


def assigned(w: World, n: int) -> list[str | None]:
    return [holder(w, f"t{i}") for i in range(n)]


def level(view: PoolView, key: tuple[str, str]) -> float:
    bucket = view.limiter.limits[key].tokens
    assert bucket is not None
    return bucket.level_at(view.now)


def limited_pool(tpm: float = 2000, tasks: int = 8) -> World:
    """One agent of MODEL (max_tokens 500) under a model limit of ``tpm``, and ``tasks`` calls of
    100 prompt tokens: 600 tokens each by estimate."""
    w = World()
    w.do(c.SetRateLimit(scope="model", scope_id=MODEL, tokens_per_min=tpm), llm("a"))
    w.do(*[call(f"t{i}") for i in range(tasks)])
    return w


def test_a_burst_is_assigned_only_as_far_as_the_model_limit_holds_its_estimates() -> None:
    w = limited_pool()
    assert assigned(w, 8) == ["a", "a", "a", None, None, None, None, None]  # 3 * 600 <= 2000 < 4 * 600
    assert level(w.view, ("model", MODEL)) == pytest.approx(200)
    [deferred] = deferrals(w)
    # The 4th waits, rate limited, until 600 tokens are back: 400 more at 2000/min.
    assert (deferred.task_id, deferred.reason) == ("t3", "RATE_LIMITED")
    assert deferred.delay_s == pytest.approx(12.0, abs=0.002)
    w.advance(11.9)
    assert holder(w, "t3") is None
    w.advance(0.2)
    assert assigned(w, 8) == ["a"] * 4 + [None] * 4
    assert deferrals(w)[1].task_id == "t4"
    assert deferrals(w)[1].delay_s == pytest.approx(18.0, abs=0.002)  # 600 from 0
    w.advance(18)
    assert holder(w, "t4") == "a"
    assert w.events(e.CommandRejected) == []


def test_an_agent_that_cannot_hold_the_estimate_is_skipped_as_rate_limited() -> None:
    w = limited_pool(tasks=3)
    w.do(llm("b", model="other"), call("t3"))
    [audit] = [x.audit for x in assignments(w) if x.task_id == "t3"]
    assert holder(w, "t3") == "b"
    assert audit is not None and audit.skipped == {"rate_limited": 1}
    assert deferrals(w) == []


def test_an_estimate_beyond_the_bucket_runs_once_the_bucket_is_full() -> None:
    w = World()
    w.do(c.SetRateLimit(scope="model", scope_id=MODEL, tokens_per_min=600), llm("a"))
    w.do(call("t0", max_tokens=1400), call("t1", max_tokens=1400))  # 1500 each, the bucket holds 600
    assert assigned(w, 2) == ["a", None]
    assert level(w.view, ("model", MODEL)) == pytest.approx(-900)
    [deferred] = deferrals(w)
    assert deferred.delay_s == pytest.approx(150.0)  # until full again: 1500 at 10 tokens/s
    w.advance(149)
    assert holder(w, "t1") is None
    w.advance(1.5)
    assert holder(w, "t1") == "a"


def test_an_agent_limit_and_its_model_limit_both_hold_the_estimate() -> None:
    w = World()
    w.do(
        c.SetRateLimit(scope="model", scope_id=MODEL, tokens_per_min=10_000),
        c.SetRateLimit(scope="agent", scope_id="a", tokens_per_min=1300),
        llm("a"),
    )
    w.do(*[call(f"t{i}") for i in range(4)])
    assert assigned(w, 4) == ["a", "a", None, None]  # the agent's own 1300 holds two
    assert level(w.view, ("agent", "a")) == pytest.approx(100)
    assert level(w.view, ("model", MODEL)) == pytest.approx(10_000 - 1200)


def test_settling_for_less_than_the_estimate_frees_tokens_at_once() -> None:
    w = limited_pool()
    w.do(c.RecordCost(cost_id="k0", agent_id="a", task_id="t0", model=MODEL, input_tokens=80,
                      output_tokens=20, cost_usd=0))
    # 200 left + the 600 reserved - the 100 used: the 4th goes now, not in 12 seconds.
    assert assigned(w, 8) == ["a"] * 4 + [None] * 4
    assert level(w.view, ("model", MODEL)) == pytest.approx(200 + 600 - 100 - 600)
    assert w.view.limiter.reservations.keys() == {"t1", "t2", "t3"}  # t0's is settled
    # Its end changes nothing more; a second cost of the same task is taken after the fact.
    w.do(c.CompleteTask(task_id="t0"))
    assert level(w.view, ("model", MODEL)) == pytest.approx(100)
    w.do(c.RecordCost(cost_id="k1", agent_id="a", task_id="t0", model=MODEL, input_tokens=50, cost_usd=0))
    assert level(w.view, ("model", MODEL)) == pytest.approx(50)


def test_settling_for_more_than_the_estimate_spends_the_real_usage() -> None:
    w = limited_pool(tasks=1)
    w.do(c.RecordCost(cost_id="k0", agent_id="a", task_id="t0", model=MODEL, input_tokens=900,
                      output_tokens=300, cost_usd=0))
    assert level(w.view, ("model", MODEL)) == pytest.approx(2000 - 1200)
    w.do(c.RecordCost(cost_id="k1", agent_id="a", model=MODEL, input_tokens=100, cost_usd=0))  # no task
    assert level(w.view, ("model", MODEL)) == pytest.approx(2000 - 1300)


def test_a_cost_another_agent_records_for_the_task_does_not_settle_its_reservation() -> None:
    w = limited_pool(tasks=1)
    w.do(llm("b", model="other"))
    w.do(c.RecordCost(cost_id="k0", agent_id="b", task_id="t0", model=MODEL, input_tokens=100, cost_usd=0))
    assert level(w.view, ("model", MODEL)) == pytest.approx(2000 - 600 - 100)
    assert "t0" in w.view.limiter.reservations


@pytest.mark.parametrize("end", [
    c.FailTask(task_id="t0"),
    c.CancelTask(task_id="t0"),
    c.DeferTask(task_id="t0", agent_id="a", reason="provider_429", delay_s=30),
    c.DeregisterAgent(agent_id="a"),
])
def test_a_run_that_ends_without_a_cost_gives_its_reservation_back(end: Any) -> None:
    w = limited_pool()
    w.do(llm("b"))  # a second agent of the model: the model's limit still holds three
    assert assigned(w, 4) == ["a", "a", "a", None]
    w.do(end)
    # t0's 600 are back: a third call is held now, not when the bucket refills (with a gone, b
    # takes three of the requeued ones); and only held calls keep a reservation.
    held = {t for t in (f"t{i}" for i in range(8)) if w.state.tasks[t].held}
    assert len(held) == 3 and w.view.limiter.reservations.keys() == held
    assert level(w.view, ("model", MODEL)) == pytest.approx(200)
    assert w.events(e.CommandRejected) == []


def test_a_retry_gives_the_reservation_back_and_its_next_run_reserves_again() -> None:
    w = World()
    retry = c.RetryPolicy(max_attempts=2, strategy="linear", base_delay_s=5, max_delay_s=5)
    w.do(c.SetRateLimit(scope="model", scope_id=MODEL, tokens_per_min=2000), llm("a"))
    w.do(c.SubmitTask(task_id="t0", type="chat", parameters={"prompt": "x" * 400}, retry=retry))
    assert level(w.view, ("model", MODEL)) == pytest.approx(1400)
    w.do(c.FailTask(task_id="t0"))
    assert level(w.view, ("model", MODEL)) == pytest.approx(2000) and not w.view.limiter.reservations
    w.advance(5)
    assert holder(w, "t0") == "a" and level(w.view, ("model", MODEL)) == pytest.approx(1400)


def test_an_agent_naming_no_model_reserves_nothing_and_pays_after_the_fact() -> None:
    w = World()
    w.do(c.SetRateLimit(scope="agent", scope_id="g", tokens_per_min=600),
         c.RegisterAgent(agent_id="g", name="g", capacity=10, heartbeat_timeout_s=HOUR))
    w.do(*[call(f"t{i}") for i in range(3)])
    assert assigned(w, 3) == ["g", "g", "g"] and not w.view.limiter.reservations
    assert level(w.view, ("agent", "g")) == 600


def test_a_rejected_assignment_holds_nothing_and_takes_nothing() -> None:
    limiter = RateLimiter()
    limiter.set(e.RateLimitSet(scope="model", scope_id=MODEL, tokens_per_min=1200, requests_per_min=60), 0.0)
    limiter.hold("t", "a", MODEL, 600)
    assert limiter.ready_at("a", MODEL, 0.0, 600) == 0.0
    assert limiter.ready_at("a", MODEL, 0.0, 700) == pytest.approx(5.0)  # 100 more at 20/s
    limiter.rejected("t", "a", MODEL)
    limit = limiter.limits[("model", MODEL)]
    assert limit.tokens == Bucket(rate=20.0, capacity=1200, level=1200, at=0.0)
    assert limit.requests == Bucket(rate=1.0, capacity=60, level=60, at=0.0)
    assert limiter.freed == {("model", MODEL)} and not limiter.holds


# -- a rebuilt view holds the same buckets -------------------------------------------------------


def buckets_of(view: PoolView) -> list[Bucket]:
    return [b for lim in view.limiter.limits.values() for b in (lim.requests, lim.tokens) if b is not None]


def limiter_state(view: PoolView) -> tuple[Any, ...]:
    """Everything the view's rate limits hold that events decide (in-flight holds aside)."""
    buckets = {key: tuple((b.level, b.at) if b is not None else None for b in (lim.requests, lim.tokens))
               for key, lim in view.limiter.limits.items()}
    reservations = {task_id: (r.agent_id, r.tokens, tuple(key for key, _ in r.buckets))
                    for task_id, r in view.limiter.reservations.items()}
    return buckets, reservations


def rebuilt(w: World) -> PoolView:
    view = PoolView(w.pool)
    for env in w.log:
        view.observe(env)
    return view


def test_a_view_rebuilt_from_the_log_holds_the_live_buckets() -> None:
    w = limited_pool()
    w.do(c.SetRateLimit(scope="agent", scope_id="a", tokens_per_min=5000, requests_per_min=30))
    w.advance(3)
    w.do(c.RecordCost(cost_id="k0", agent_id="a", task_id="t0", model=MODEL, input_tokens=80,
                      output_tokens=20, cost_usd=0))
    w.advance(7)
    w.do(c.FailTask(task_id="t1"), c.CancelTask(task_id="t5"))
    w.advance(40)
    assert sum(1 for h in assigned(w, 8) if h is not None) >= 5
    assert limiter_state(rebuilt(w)) == limiter_state(w.view)
    assert all(b.held == 0 for b in buckets_of(w.view))


# -- Hypothesis: random traffic, same buckets live and rebuilt, never overdrawn by estimate ----------

AGENTS = {"a": (MODEL, 300), "b": (MODEL, None), "c": ("other", 200), "g": (None, None)}
PROMPTS = [0, 40, 400, 4000]
ASKED = [None, 100, 2500, 5000]
CAP = 3000.0


class ReservationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.params: dict[str, dict[str, Any]] = {}
        self.costs = 0
        self.costed: set[tuple[str, int]] = set()  # (task, run) whose usage was recorded

    @initialize(agent_limit=st.sampled_from([None, 1500.0]), requests=st.sampled_from([None, 20.0]))
    def start(self, agent_limit: float | None, requests: float | None) -> None:
        self.world.send(c.SetRateLimit(scope="model", scope_id=MODEL, tokens_per_min=CAP))
        self.world.send(c.SetRateLimit(scope="model", scope_id="other", tokens_per_min=CAP,
                                       requests_per_min=requests))
        if agent_limit is not None:
            self.world.send(c.SetRateLimit(scope="agent", scope_id="a", tokens_per_min=agent_limit))
        for agent_id in AGENTS:
            self.world.send(self.registration(agent_id))

    def registration(self, agent_id: str) -> c.RegisterAgent:
        model, max_tokens = AGENTS[agent_id]
        meta: dict[str, Any] = {} if model is None else {"model": model}
        if max_tokens is not None:
            meta["max_tokens"] = max_tokens
        return c.RegisterAgent(agent_id=agent_id, name=agent_id, capacity=3, metadata=meta,
                               heartbeat_timeout_s=HOUR)

    def estimate(self, task_id: str, agent_id: str) -> int:
        default = max_tokens_default(self.registration(agent_id).metadata)
        return 0 if default is None else estimate_tokens(self.params[task_id], default)

    def held(self) -> list[str]:
        return sorted(t for t, s in self.world.state.tasks.items() if s.held)

    @rule(prompt=st.sampled_from(PROMPTS), asked=st.sampled_from(ASKED), n=st.integers(1, 3))
    def submit(self, prompt: int, asked: int | None, n: int) -> None:
        for _ in range(n):
            task_id = f"t{len(self.params)}"
            params: dict[str, Any] = {"messages": [{"role": "user", "content": "y" * prompt}]}
            if asked is not None:
                params["max_tokens"] = asked
            self.params[task_id] = params
            self.world.send(c.SubmitTask(task_id=task_id, type="chat", parameters=params))

    @rule(data=st.data(), share=st.sampled_from([0.0, 0.1, 0.5, 1.0]), with_task=st.booleans())
    def record_cost(self, data: st.DataObject, share: float, with_task: bool) -> None:
        """A held call's usage, at most its estimate, decided next (nothing in flight before it):
        once per run for an agent of MODEL, so it always settles that run's reservation; agents
        of other models also report usage of no task (taken after the fact)."""
        self.world.run()
        held = self.held()
        if not held:
            return
        task_id = data.draw(st.sampled_from(held))
        agent_id = self.world.state.tasks[task_id].agent_id or ""
        model = AGENTS[agent_id][0] or "other"
        run = (task_id, sum(1 for x in assignments(self.world) if x.task_id == task_id))
        if model == MODEL and (run in self.costed or not with_task):
            return
        self.costed.add(run)
        used = math.floor(share * (self.estimate(task_id, agent_id) or 500))
        self.costs += 1
        self.world.do(c.RecordCost(cost_id=f"k{self.costs}", agent_id=agent_id,
                                   task_id=task_id if with_task else None, model=model,
                                   input_tokens=used, cost_usd=0))

    @rule(data=st.data(), kind=st.sampled_from(["complete", "fail", "cancel", "defer", "start"]))
    def finish(self, data: st.DataObject, kind: str) -> None:
        held = self.held()
        if not held:
            return
        task_id = data.draw(st.sampled_from(held))
        self.world.send({
            "complete": c.CompleteTask(task_id=task_id),
            "fail": c.FailTask(task_id=task_id),
            "cancel": c.CancelTask(task_id=task_id),
            "defer": c.DeferTask(task_id=task_id, agent_id=self.world.state.tasks[task_id].agent_id,
                                 delay_s=2),
            "start": c.StartTask(task_id=task_id),
        }[kind])

    @rule(agent_id=st.sampled_from(sorted(AGENTS)), back=st.booleans())
    def deregister(self, agent_id: str, back: bool) -> None:
        self.world.send(c.DeregisterAgent(agent_id=agent_id))
        if back:
            self.world.send(self.registration(agent_id))

    @rule(n=st.integers(1, 12))
    def decide(self, n: int) -> None:
        for _ in range(n):
            self.world.step()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0, 20.0]))
    def time_passes(self, seconds: float) -> None:
        self.world.advance(seconds)

    @invariant()
    def rebuilt_from_the_log_it_holds_the_same_buckets(self) -> None:
        assert limiter_state(rebuilt(self.world)) == limiter_state(self.world.view)

    @invariant()
    def the_model_is_never_overdrawn_by_more_than_one_oversized_estimate(self) -> None:
        """Every call on MODEL was assigned when its bucket held its estimate (or was full, for one
        larger than the bucket), and usage never exceeds the estimate: so the bucket never goes
        below zero but by the largest estimate beyond its capacity."""
        view = self.world.view
        biggest = max((self.estimate(x.task_id, x.agent_id) for x in assignments(self.world)
                       if AGENTS[x.agent_id][0] == MODEL), default=0)
        limit = view.limiter.limits.get(("model", MODEL))
        if limit is None or limit.tokens is None:
            return  # not yet decided
        # Refills are rate x (now - then) on epoch-second floats (one ulp there is ~2.4e-7 s, so
        # ~1e-5 tokens at this rate per refill): a thousandth of a token is float noise, a whole
        # token is not.
        assert limit.tokens.level_at(view.now) >= min(0.0, CAP - biggest) - 1e-3

    def teardown(self) -> None:
        self.world.run()
        self.world.advance(600)
        view = self.world.view
        assert all(b.held == 0 for b in buckets_of(view))
        assert not view.limiter.holds
        assert limiter_state(rebuilt(self.world)) == limiter_state(view)
        # What still holds a reservation is a task still held by the agent that reserved it.
        for task_id, r in view.limiter.reservations.items():
            task = self.world.state.tasks[task_id]
            assert task.held and task.agent_id == r.agent_id, (task_id, task)


ReservationMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=35, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestReservations = ReservationMachine.TestCase

