"""The HTTP API (FastAPI): commands in, validated, wrapped and appended; read models and the log out.

``create_app`` builds it on a service (``services.http.app`` says where each part lives).

It must never decide anything (only the decider accepts or rejects commands), never append
anything but commands, and never append a command it could not validate.
"""

from services.http.app import create_app

__all__ = ["create_app"]
