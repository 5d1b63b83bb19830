"""``agentbus bench --executor``: the report says when its paced rate is close to what the executor
completes saturated, where the paced latency is queueing rather than what a call costs."""

from __future__ import annotations

from services.bench.executors import QUEUEING_LOAD, queueing_note


def test_a_paced_rate_near_or_over_saturation_is_called_out() -> None:
    assert queueing_note(0.5) is None
    assert queueing_note(QUEUEING_LOAD - 0.01) is None
    near = queueing_note(QUEUEING_LOAD)
    assert near is not None and "80% of this run's saturated rate" in near
    over = queueing_note(1.198)
    assert over is not None and "120%" in over and "queue" in over
