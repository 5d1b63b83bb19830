"""Stand-in servers: real local servers that tests, the benchmark and the examples call instead of
the outside world, through the same client code as the real thing.

- ``http_target``: an HTTP API target for the ``http_api`` executor;
- ``openai_compat``: an OpenAI-compatible ``/v1/chat/completions`` (and ``/v1/models``);
- ``anthropic_compat``: an Anthropic Messages ``/v1/messages``;
- ``mcp_tools``: an MCP server with a few deterministic tools, over streamable HTTP or stdio;
- ``serving``: runs any of them on a local port in a thread (``serving(app)``, ``free_port()``).

The model stand-ins echo their input and fail on demand (``[429]``, ``[529]``, ``[slow:2]``...,
see ``_faults``). ``python -m services.executors.standins`` starts them from a shell.
Never for production traffic: no TLS, bound to 127.0.0.1.
"""
