"""The ``agentbus`` command: the root group, and where each command group comes from.

* ``services.cli.server``: ``serve`` and ``worker`` run the service;
* ``services.cli.client``: ``agent``, ``task``, ``cost``, ``prices``, ``send`` talk to a running server
  (``agent run`` is in ``services.cli.local_agent``, beside the agent process it runs);
* ``services.cli.logops``: ``events``, ``projections``, ``replay``, ``contracts`` work on the log,
  the read models and the contracts directly;
* ``services.cli.executor``: ``executor run`` hosts executors in a process of their own, ``executor
  test`` tries one;
* ``services.cli.workflow``: ``workflow`` validates definition files and runs, follows, cancels and
  signals workflows on a running server;
* ``services.cli.tokens``: ``tokens`` creates, lists and revokes API tokens on the log directly;
* ``services.cli.audit``: ``audit`` verifies the log's hash chain and signed checkpoints, signs them;
* ``services.cli.backup``: ``backup`` creates, lists, verifies and restores backups of a deployment;
* ``services.cli.bench``: ``bench`` (the scenario it runs is ``services.bench``);
* ``services.cli.top``: ``top`` watches a pool live on a terminal (the UI is ``services.tui``).

Every command takes its settings from one ``services.runtime.settings.Settings``: a flag wins over
``AGENTBUS_*``, which wins over the default (``services.cli.common.settings_options``).
This module must never hold a command's logic: it only assembles the groups.
"""

from __future__ import annotations

import click

from services.cli.audit import audit_group
from services.cli.backup import backup_group
from services.cli.bench import bench_command
from services.cli.client import agent, cost, prices, send, task
from services.cli.executor import executor
from services.cli.logops import contracts_group, events_group, projections_group, replay
from services.cli.server import serve, worker
from services.cli.tokens import tokens_group
from services.cli.top import top
from services.cli.workflow import workflow


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentbus")
def main() -> None:
    """agentbus: an event-sourced control plane for fleets of AI agents.

    Settings come from flags, then AGENTBUS_* variables, then defaults. The client commands
    (agent, task, cost, prices, send) find the server at --url / AGENTBUS_URL, else at
    http://AGENTBUS_HOST:AGENTBUS_PORT, where `agentbus serve` listens (default http://127.0.0.1:8080).
    """


for command, name in (
    (serve, "serve"),
    (worker, "worker"),
    (agent, "agent"),
    (task, "task"),
    (cost, "cost"),
    (prices, "prices"),
    (send, "send"),
    (workflow, "workflow"),
    (executor, "executor"),
    (events_group, "events"),
    (projections_group, "projections"),
    (replay, "replay"),
    (contracts_group, "contracts"),
    (tokens_group, "tokens"),
    (audit_group, "audit"),
    (backup_group, "backup"),
    (bench_command, "bench"),
    (top, "top"),
):
    main.add_command(command, name)


if __name__ == "__main__":
    main()
