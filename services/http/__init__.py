"""The HTTP API (FastAPI): commands in, validated, wrapped and appended; read models and the log out.

It must never decide anything (only the decider accepts or rejects commands), never append
anything but commands, and never append a command it could not validate.
"""
