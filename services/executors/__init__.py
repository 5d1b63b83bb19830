"""Executors: agents agentbus hosts, which call the outside world for the tasks they are given.

- ``base``: what every executor is (``Call`` in, classified ``Outcome`` out);
- ``http_api``, ``ai_agent``, ``mcp_server``: the three kinds; ``factory`` picks one by ``type``;
- ``secrets``: ``${env:NAME}`` / ``${file:PATH}`` references, resolved in the executor process;
- ``view`` and ``host``: the process that registers them, reads their assignments from the log
  and reports each run; ``hosting`` runs a host inside ``agentbus serve``;
- ``trial``: one call without registering (``POST /v1/agents/test``, ``agentbus executor test``);
- ``standins``: real local servers (an HTTP target, OpenAI- and Anthropic-compatible LLMs, an MCP
  server) for tests, the benchmark and the examples.
"""
