"""Logging setup: human text, or one JSON object per line (`--log-format json`).

Context goes in with `extra=` (room, utterance, peer, …) and comes out as fields (JSON) or
`key=value` pairs (text). Nothing in the agent logs per audio frame.
"""

from __future__ import annotations

import json
import logging
import re
import time

# LogRecord attributes that are not context the caller added with `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# extras that are presentation, not context (uvicorn's ANSI-coloured copy of the message)
_IGNORED = {"color_message"}


# C0, DEL, C1, line/paragraph separators, bidi overrides: what can forge or hide a log line
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """`text` on one visible line: each unsafe character as its Python escape (`\\n`, `\\x00`)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def context(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items()
            if k not in _STANDARD and k not in _IGNORED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(context(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual text line, with the `extra=` context appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)  # a name or text from a client
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        # indented: no line of a traceback (its message may quote a client) looks like a record
        lines = super().formatException(ei).split("\n")
        return "\n".join("  " + escape_controls(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("  " + escape_controls(line) for line in stack_info.split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = context(record)
        if not ctx:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the context
        pairs = " ".join(f"{k}={escape_controls(str(v))}" for k, v in ctx.items())
        return head + " " + pairs + sep + tail


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Log to stderr through the root logger. Servers started afterwards must not install their
    own handlers (uvicorn: `log_config=None`), so their lines come out in the same format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aioice", "aiortc"):  # they log per packet at DEBUG
        logging.getLogger(noisy).setLevel(logging.WARNING)
