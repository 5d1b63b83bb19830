"""Verifying a delivery: who sent it (its signature), which delivery it is, and what it carries.

Two schemes, one secret per source:

- ``standard`` (Standard Webhooks, standardwebhooks.com): ``webhook-id``, ``webhook-timestamp``
  and ``webhook-signature`` headers; HMAC-SHA256 over ``id.timestamp.body`` with the base64 key
  of a ``whsec_`` secret, checked by the reference implementation (``standardwebhooks.Webhook``).
  A timestamp more than 5 minutes from this server's clock is refused.
- ``github``: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body with the raw secret,
  compared in constant time; the delivery is ``X-GitHub-Delivery``, its type ``X-GitHub-Event``.
  GitHub sends no timestamp: a replay is refused by its delivery id (the log's command ids).

A refusal is ``Refused`` with the HTTP status it is answered with: 401 for a missing or wrong
signature, 400 for a timestamp outside the window or a header the scheme needs. Must never put a
secret or a signature it computed in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.values import text_problem
from contracts.webhooks import MAX_WEBHOOK_ID

__all__ = ["TOLERANCE_S", "Delivery", "Refused", "secret_problem", "verify"]

# Standard Webhooks' own window (the reference implementation's ``webhook_tolerance``).
TOLERANCE_S = 5 * 60
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 16, 256
MAX_GITHUB_SECRET = 1000


class Refused(Exception):
    """A delivery that is not accepted: ``status`` (401 or 400) and why, without any secret."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery: its id, and its event type when a header names it (GitHub)."""

    webhook_id: str
    event_type: str | None = None


def secret_problem(scheme: str, secret: str) -> str | None:
    """Why ``secret`` cannot be a ``scheme`` source's secret, or None."""
    if scheme == "github":
        if not 1 <= len(secret) <= MAX_GITHUB_SECRET:
            return f"a GitHub webhook secret is 1 to {MAX_GITHUB_SECRET} characters"
        return text_problem(secret)
    if not secret.startswith(SECRET_PREFIX):
        return f"a Standard Webhooks secret starts with {SECRET_PREFIX!r}, then the key in base64"
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"after {SECRET_PREFIX!r}, a Standard Webhooks secret is the key in base64"
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        return f"a Standard Webhooks key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}"
    return None


def _webhook_id(value: str | None, header: str) -> str:
    if not value:
        raise Refused(400, f"the {header} header is missing")
    if len(value) > MAX_WEBHOOK_ID or text_problem(value) is not None or value != value.strip() \
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise Refused(400, f"the {header} header must be 1 to {MAX_WEBHOOK_ID} printable characters")
    return value


def _standard(secret: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
    absent = [name for name in ("webhook-id", "webhook-timestamp") if not headers.get(name)]
    if absent:  # a request that is not a Standard Webhooks delivery: malformed, not unauthenticated
        raise Refused(400, f"the {' and '.join(absent)} header{'s are' if len(absent) > 1 else ' is'} "
                           "missing (a Standard Webhooks delivery carries webhook-id, webhook-timestamp "
                           "and webhook-signature)")
    if not headers.get("webhook-signature"):
        raise Refused(401, "the webhook-signature header is missing")
    stamp = headers.get("webhook-timestamp")
    if stamp is not None:
        try:
            sent = float(stamp)
        except ValueError:
            raise Refused(400, "webhook-timestamp is not a Unix time in seconds") from None
        if abs(time.time() - sent) > TOLERANCE_S:
            raise Refused(400, f"webhook-timestamp {stamp} is more than {TOLERANCE_S // 60} minutes from "
                               "this server's clock: refused as a possible replay (check the sender's clock)")
    try:
        Webhook(secret).verify(body.decode("utf-8"), dict(headers), json_parse=False)
    except UnicodeDecodeError:
        raise Refused(401, "the body is not UTF-8, so no Standard Webhooks signature covers it") from None
    except WebhookVerificationError as exc:
        why = ("webhook-id, webhook-timestamp and webhook-signature are required"
               if "Missing" in str(exc) else "no signature in webhook-signature matches the body")
        raise Refused(401, why) from None
    except ValueError:  # a signature that is not "v1,<base64>"
        raise Refused(401, "webhook-signature is malformed: expected 'v1,<base64>' entries") from None
    return Delivery(_webhook_id(headers.get("webhook-id"), "webhook-id"))


def _github(secret: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
    given = headers.get("x-hub-signature-256")
    if not given:
        raise Refused(401, "the X-Hub-Signature-256 header is missing")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace")):
        raise Refused(401, "X-Hub-Signature-256 does not match the body")
    delivery = _webhook_id(headers.get("x-github-delivery"), "X-GitHub-Delivery")
    event = headers.get("x-github-event")
    if not event or len(event) > 200 or text_problem(event) is not None:
        raise Refused(400, "the X-GitHub-Event header is missing or longer than 200 characters")
    return Delivery(delivery, event)


def verify(scheme: str, secret: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
    """The delivery ``body`` and ``headers`` (names in lower case) are, if ``secret`` signed them;
    raises Refused."""
    return (_github if scheme == "github" else _standard)(secret, body, headers)
