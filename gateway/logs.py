"""Logging for every gateway process (serve, worker, CLI), with secrets kept out of every line.

Tokens travel in query strings (`/ws?token=`, `/events?token=`, because browsers cannot set
headers there) and callback URLs carry their receivers' secrets in theirs, and libraries log
URLs freely: uvicorn's access and WebSocket lines, httpx's request lines, websockets' debug
dump of the handshake and of every frame. So redaction is not left to each call site: one
filter sits on every handler, and whatever reaches a handler, from any logger, is scrubbed.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any, Final

REDACTED: Final = "<redacted>"

_SCRUBS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # What a client sent over a WebSocket, as websockets' debug dump shows it: its ops carry
    # tokens, and the dump cuts long frames in the middle, so nothing above would recognise
    # what is left of one. Only the frame's kind and size stay.
    (
        re.compile(r"(?m)^< (TEXT|BINARY|CONT) .*?(\[\d+ bytes[^\]]*\])$"),
        r"< \1 " + REDACTED + r" \2",
    ),
    # A query string of a URL or path: `/ws?token=...`, `https://h/hook?secret=...`.
    (re.compile(r"(?<=[^\s?'\"])\?[^\s'\"<>]+"), "?" + REDACTED),
    # A JWT anywhere (a channel token in a WebSocket frame, a header, an error message).
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Credential headers, as websockets' debug lines (`< Authorization: Bearer x`) or an ASGI
    # scope at trace level (`(b'cookie', b'gateway_token=x')`) show them.
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)"
            r"(['\"]?\s*[:,]\s*b?['\"]?)[^'\"\r\n]+"
        ),
        r"\1\2" + REDACTED,
    ),
    # `token=x`, `"token": "x"`, `'query_string': b'x'` and the like.
    (
        re.compile(
            r"(?i)\b(token|secret|api_key|apikey|password|query_string)"
            r"(['\"]?\s*[:=]\s*b?['\"]?)[^\s'\"&,;}]+"
        ),
        r"\1\2" + REDACTED,
    ),
)

_PLAIN_TYPES: Final = (int, float, bool, type(None))

_SUSPECT: Final = re.compile(
    r"\?|eyj|token|secret|key|passw|authoriz|cookie|query_string|^< ", re.MULTILINE
)
"""What every text `_SCRUBS` could change contains (lower-cased): one cheap scan lets ordinary
records (most of them: the access log of `POST /channels/.../events` under load) through."""


def redact(text: str) -> str:
    """`text` with query strings, JWTs and credential values replaced by `<redacted>`."""
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, _PLAIN_TYPES):
        return arg
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, bytes | bytearray):
        text = bytes(arg).decode("utf-8", "replace")
        return arg if redact(text) == text else redact(text)
    # Objects (httpx.URL, exceptions, requests...) are formatted with %s or %r: if either form
    # carries a secret, log the redacted text instead of the object.
    text, shown = str(arg), repr(arg)
    if redact(text) != text or redact(shown) != shown:
        return redact(text)
    return arg


def _suspect(record: logging.LogRecord) -> bool:
    if record.exc_info or record.exc_text or record.stack_info:
        return True
    args: Any = record.args
    values = args.values() if isinstance(args, dict) else args or ()
    parts = [str(record.msg)]
    for value in values:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, bytes | bytearray):
            parts.append(bytes(value).decode("utf-8", "replace"))
        elif not isinstance(value, _PLAIN_TYPES):
            parts += (str(value), repr(value))
    return _SUSPECT.search("\n".join(parts).lower()) is not None


class RedactSecrets(logging.Filter):
    """Scrub a record before any formatter sees it; installed on every handler.

    Arguments are scrubbed one by one, which keeps their shape for formatters that read them
    (uvicorn's access formatter unpacks five of them); if the formatted message still carries
    a secret (in the format string itself, say), the record becomes that message, scrubbed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _suspect(record):
            return True
        args: Any = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in args)
        elif isinstance(args, dict):
            record.args = {key: _redact_arg(value) for key, value in args.items()}
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        scrubbed = redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(level: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` of every process, and uvicorn's `log_config`.

    uvicorn's own handlers and formats are kept as they were (its lines on stderr, the access
    log on stdout); every handler gets the redaction filter. uvicorn sets the levels of its
    loggers itself from its `log_level`.
    """
    root_level = "DEBUG" if level.lower() in {"debug", "trace"} else level.upper()
    if root_level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
        root_level = "WARNING"  # the client commands read GATEWAY_LOG_LEVEL unchecked
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {
            "plain": {"format": FORMAT},
            "uvicorn": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(levelprefix)s %(message)s",
                "use_colors": None,
            },
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
        },
        "handlers": {
            "plain": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
            "uvicorn": {
                "class": "logging.StreamHandler",
                "formatter": "uvicorn",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "filters": ["redact"],
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["uvicorn"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["plain"], "level": root_level},
    }


def configure_logging(level: str) -> None:
    """Configure this process's logging: `level` for the root, secrets redacted everywhere."""
    logging.config.dictConfig(logging_config(level))


def install_redaction() -> None:
    """Put the filter on every handler that exists now (idempotent).

    For configurations made elsewhere: `uvicorn --factory gateway.app:app_from_env` with
    uvicorn's own logging config, or handlers a host application added.
    """
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
