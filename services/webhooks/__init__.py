"""Inbound webhooks: verifying a delivery's signature (``signatures``), and turning verified
deliveries into commands (``mapping``, pure; ``reactor``, which rides the coordinator driver).

The HTTP endpoints are ``services.http.webhooks``; the decider's rules ``services.domain.webhooks``;
the contract ``contracts.webhooks``.
"""

from services.webhooks.reactor import SOURCE, WebhookReactor

__all__ = ["SOURCE", "WebhookReactor"]
