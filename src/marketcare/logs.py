"""Structured logs: one line per event, as key=value text or as JSON."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: record attributes that are not an event's fields; uvicorn adds ``color_message`` (the
#: message again, with terminal colour codes) to its own records
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = (
            datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        )
        extra = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line += f" {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    s = str(value)
    # quoted when it could be misread: a space, or a line break or another control
    # character (a user name typed by anyone must not forge a second log line)
    plain = s and " " not in s and s.isprintable()
    return s if plain else json.dumps(s, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


#: the security log: sign-ins, throttling, refusals, sessions, token and account changes
SECURITY = logging.getLogger("marketcare.security")


def security(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One line of the security log: ``event`` and its fields (``user``, ``client``, …).

    Values are cut to 200 characters: they may come from anyone (a user name typed at
    the sign-in form), and a log line must stay one line of bounded length.
    """
    clean = {
        (f"{k}_" if k in _RESERVED else k): (v[:200] if isinstance(v, str) else v)
        for k, v in fields.items()
    }
    SECURITY.log(level, event, extra={"event": event, **clean})


class _ToStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when logging was set
    up: a caller that swaps standard error for a while (a test runner capturing a
    command's output) never leaves a thread's later lines writing to a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = _ToStderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # libraries that log their own steps at INFO (WeasyPrint: a dozen lines a PDF)
    for noisy in ("apscheduler", "watchfiles", "alembic", "weasyprint", "fontTools"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
