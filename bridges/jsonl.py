"""JSON lines in: one `{"from": "...", "text": "..."}` object per line, so any chat tool can be piped in.

A malformed line is reported on stderr with its line number and skipped; the rest go on.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .lines import ChatLine
from .sink import SpeakSink


class JsonChatLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1, max_length=200)
    text: str = Field(min_length=1)
    priority: Literal["normal", "high"] = "normal"


def parse_line(raw: str) -> ChatLine:
    """One input line to a chat line; ValueError with a short reason if it is not one."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    try:
        msg = JsonChatLine.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None
    return ChatLine(msg.from_, msg.text, msg.priority)


async def read_lines(stream: IO[bytes]) -> AsyncIterator[bytes]:
    """Lines of a pipe or terminal without blocking the loop; a regular file is read directly."""
    mode = os.fstat(stream.fileno()).st_mode
    if stat.S_ISREG(mode):
        for raw in stream:
            yield raw
            await asyncio.sleep(0)
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    try:
        while raw := await reader.readline():
            yield raw
    finally:
        transport.close()


async def run_jsonl(stream: IO[bytes], sink: SpeakSink, errors: IO[str] = sys.stderr) -> int:
    """Feed every line to the sink, wait until all are answered; returns how many were malformed."""
    malformed = 0
    number = 0
    async for raw in read_lines(stream):
        number += 1
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        try:
            line = parse_line(text)
        except ValueError as exc:
            malformed += 1
            print(f"jsonl: line {number}: {exc}; skipped", file=errors, flush=True)
            sink.reject(ChatLine("?", text[:80]), "malformed")
            continue
        sink.offer(line)
    await sink.drain()
    return malformed
