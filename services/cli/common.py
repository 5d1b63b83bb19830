"""What every command module of the CLI shares: settings from flags, failing cleanly, printing.

``settings_options`` turns fields of ``services.runtime.settings.Settings`` into flags (help,
environment variable and default come from the field, never written here) and hands the command
one ``Settings``: a flag the user passed wins, then ``AGENTBUS_*``, then the field's default. A log
URL no adapter takes is a usage error there, before the command runs; a command that only works on
a deployment that exists says so (``existing_log``), and a SQLite log that is not there is then an
error naming it, before anything is opened: opening it would create it.

This module must never decide, project or open anything itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import types
import typing
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx
import orjson
import pydantic

from events import ADAPTERS, LogError, UnknownTopic
from events.sqlite import SqliteLog
from services.runtime.settings import Settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Long enough for the server's longest outcome wait (60 s) plus the round trip.
HTTP_TIMEOUT_S = 75.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def dumps(obj: Any, *, indent: bool = False) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0).decode()


def json_arg(text: str | None, what: str) -> Any:
    """The JSON value of an argument; a usage error naming ``what`` when it is not JSON."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


def json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """The JSON object of an argument; a usage error naming ``what`` when it is anything else."""
    value = json_arg(text, what)
    if text is None:
        return None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=what)
    return value


def fail(message: str) -> NoReturn:
    """Print ``agentbus: message`` on stderr and exit 1."""
    click.echo(f"agentbus: {message}", err=True)
    sys.exit(1)


# --- settings -----------------------------------------------------------------------------------


def load_settings(**flags: Any) -> Settings:
    """Settings with the flags the user passed (``None``: not passed) over ``AGENTBUS_*`` and defaults."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{_named(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                             for err in exc.errors())
        fail(f"invalid settings: {problems}")


def _named(loc: tuple[int | str, ...]) -> str:
    """A setting as the user wrote it: its flag and its environment variable."""
    name = str(loc[0]) if loc else ""
    if name not in Settings.model_fields:
        return name or "settings"
    return f"{_flag(name)} / {Settings.env_name(name)}"


def field_type(model: type[pydantic.BaseModel], name: str) -> Any:
    """The click type of a model's field, with the field's bounds and choices.

    A bad flag is then a usage error naming the allowed values, not a traceback; the bounds stay
    written once, on the field (a setting's, or a command contract's).
    """
    field = model.model_fields[name]
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else kind
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(kind)])
    bounds: dict[str, Any] = {}
    for m in field.metadata:
        for attr, key, is_open in (("ge", "min", False), ("gt", "min", True), ("le", "max", False),
                                   ("lt", "max", True)):
            if getattr(m, attr, None) is not None:
                bounds[key] = getattr(m, attr)
                bounds[f"{key}_open"] = is_open
    if kind is int:
        return click.IntRange(**bounds)
    if kind is float:
        return click.FloatRange(**bounds)
    if kind is Path:
        return click.Path(path_type=Path)
    return str


def setting_option(name: str) -> Callable[[F], F]:
    """The flag of the setting ``name`` (``data_dir`` -> ``--data-dir``); ``None`` when not passed."""
    field = Settings.model_fields[name]
    flag = _flag(name)
    extras = [f"env var: {Settings.env_name(name)}"]
    if isinstance(field.default, bool):
        extras.append(f"default: {'on' if field.default else 'off'}")
    elif field.default not in (None, ""):
        extras.append(f"default: {field.default}")
    help_text = f"{field.description} [{'; '.join(extras)}]"
    if field.annotation in (bool, bool | None):  # None: the setting's default decides
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    return click.option(flag, name, type=field_type(Settings, name), default=None, help=help_text)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def settings_options(*names: str, existing_log: bool = False) -> Callable[[F], F]:
    """A flag per named setting; the command receives ``settings`` instead of the flags' values.

    With ``broker`` among them, a log URL no adapter takes is a usage error naming the ones they do.
    ``existing_log``: the command reads (or appends to) a deployment and never makes one, so a
    SQLite log that does not exist is an error before the command runs (``require_log``).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            flags = {name: kwargs.pop(name) for name in names}
            settings = load_settings(**flags)
            if "broker" in names:
                log_file(settings)
            if existing_log:
                require_log(settings)
            return fn(settings=settings, **kwargs)

        for name in reversed(names):
            command = setting_option(name)(command)
        return command  # type: ignore[return-value]

    return decorate


# The settings that name a deployment: what every command pointed at one takes.
DEPLOYMENT = ("data_dir", "broker", "database", "partitions", "topic_prefix", "app_id")


# --- the log ------------------------------------------------------------------------------------


def log_file(settings: Settings) -> Path | None:
    """The file of the deployment's SQLite log (None: Kafka); a usage error for a log URL no adapter
    takes, naming the schemes that are (a traceback from deep inside the command otherwise)."""
    url, hint = settings.broker, f"'{_flag('broker')}' / {Settings.env_name('broker')}"
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ADAPTERS:
        known = ", ".join(f"{s}://" for s in ADAPTERS)
        raise click.BadParameter(f"unsupported log URL {url!r}: use one of {known}", param_hint=hint)
    if scheme != "sqlite":
        return None
    try:
        return SqliteLog(url).path  # parses the URL; opens nothing
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def require_log(settings: Settings) -> None:
    """Exit 1 unless the deployment's SQLite log exists (a Kafka topic that does not is named when
    read: ``log_errors``). Opening a log creates it, its directory included, so a command that only
    reads must look first: a mistyped --data-dir would otherwise leave an empty deployment behind."""
    path = log_file(settings)
    if path is None or path.is_file():
        return
    # The log the settings put in the data directory when no broker is given (``Settings``).
    derived = settings.broker == f"sqlite:///{settings.data_dir}/log.db"
    fail(f"no log at {path}: is {_flag('data_dir') if derived else _flag('broker')} right?")


def log_errors(broker: str) -> contextlib.AbstractContextManager[None]:
    """LogError (corrupt record, missing topic) -> exit 1 naming it, not a traceback."""

    @contextlib.contextmanager
    def handler() -> Iterator[None]:
        try:
            yield
        except UnknownTopic as exc:
            fail(f"no topic {exc} in {broker}: nothing was written there yet (check --broker/--data-dir)")
        except LogError as exc:
            fail(str(exc) or type(exc).__name__)

    return handler()


def logging_to_stderr(*quiet: str) -> None:
    """Log INFO and up to stderr; the named loggers only WARNING and up."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


# --- transports a test injects ------------------------------------------------------------------


def _injected(key: str) -> Any:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(dict) if ctx is not None else None
    return obj.get(key) if obj else None


def transport() -> httpx.BaseTransport | None:
    """A transport the caller injected through ``obj={"transport": ...}`` (tests), else the network."""
    t = _injected("transport")
    return t if isinstance(t, httpx.BaseTransport) else None


def async_transport() -> httpx.AsyncBaseTransport | None:
    """An async transport the caller injected through ``obj={"async_transport": ...}`` (tests)."""
    t = _injected("async_transport")
    return t if isinstance(t, httpx.AsyncBaseTransport) else None


# --- credentials --------------------------------------------------------------------------------


def bearer(settings: Settings | None = None) -> dict[str, str]:
    """The Authorization header of the ``token`` setting (AGENTBUS_TOKEN), or none when it is unset."""
    token = (settings if settings is not None else Settings()).token
    return {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}
