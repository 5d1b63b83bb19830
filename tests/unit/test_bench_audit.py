"""`agentbus bench --audit` runs end to end and reports both sides of its comparison."""

from __future__ import annotations

import json

from click.testing import CliRunner

from services.cli.main import main


def test_bench_audit_reports_the_chain_cost_and_verification_speed() -> None:
    result = CliRunner().invoke(main, ["bench", "--audit", "--audit-records", "3000", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["records"] == 3000
    for mode in ("durable", "no_fsync"):
        side = report[mode]
        assert side["chained_appends_per_s"] > 0 and side["unchained_appends_per_s"] > 0
        expected = round(1 - side["chained_appends_per_s"] / side["unchained_appends_per_s"], 4)
        assert side["chain_cost"] == expected
    # The chained log and its export verify: the figures are of a real verification.
    verify = report["verify"]
    assert verify["ok"] is True
    for what in ("log", "export"):
        assert verify[f"{what}_events_per_s"] > 0 and verify[f"{what}_one_process_events_per_s"] > 0
