"""Bilibili's live message stream, packet layer (what blivedm did, without its stale pins).

Every websocket frame holds one or more packets, each a 16-byte big-endian header and a body:

    offset 0  u32  packet length (header + body)
    offset 4  u16  header length (16)
    offset 6  u16  protocol version: 0 JSON body, 1 plain body (heartbeat, auth, a 4-byte
                   number), 2 zlib-compressed packets, 3 brotli-compressed packets
    offset 8  u32  operation: 2 heartbeat, 3 heartbeat reply (4-byte popularity),
                   5 message (a command, JSON), 7 auth, 8 auth reply ({"code": 0})
    offset 12 u32  sequence id (1)

A compressed body (versions 2 and 3) is itself a run of packets, several commands in one frame.
The layout follows the community's public description of the protocol (the Bilibili-Live-API and
bilibili-API-collect write-ups, blivedm's implementation); Bilibili publishes none of its own.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">IHHII")
MAX_DECOMPRESSED = 8 << 20  # one frame's commands; a larger one is refused, not expanded
_CHUNK = 4096


class Op(IntEnum):
    HEARTBEAT = 2
    HEARTBEAT_REPLY = 3
    MESSAGE = 5
    AUTH = 7
    AUTH_REPLY = 8


class Ver(IntEnum):
    JSON = 0
    PLAIN = 1  # heartbeat, auth and their replies
    ZLIB = 2
    BROTLI = 3


class PacketError(ValueError):
    """Bytes that are not a well-formed packet run."""


@dataclass(frozen=True, slots=True)
class Packet:
    op: int
    ver: int
    body: bytes

    def json(self) -> dict:
        value = json.loads(self.body.decode("utf-8"))
        if not isinstance(value, dict):
            raise PacketError(f"a command is a JSON object, not {type(value).__name__}")
        return value

    @property
    def popularity(self) -> int:
        """A heartbeat reply's body: the room's popularity figure, a big-endian u32."""
        if len(self.body) < 4:
            raise PacketError("a heartbeat reply carries 4 bytes")
        return int.from_bytes(self.body[:4], "big")


def encode(op: int, body: bytes | dict = b"", ver: int = Ver.PLAIN, seq: int = 1) -> bytes:
    """One packet; a dict body is sent as JSON (the auth packet)."""
    if isinstance(body, dict):
        body = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(HEADER.size + len(body), HEADER.size, ver, op, seq) + body


def auth_packet(room_id: int, key: str | None, uid: int = 0) -> bytes:
    """Sent first on a new connection; protover 3 asks for brotli bodies."""
    body: dict = {"uid": uid, "roomid": room_id, "protover": 3, "platform": "web", "type": 2}
    if key:
        body["key"] = key
    return encode(Op.AUTH, body)


def heartbeat_packet() -> bytes:
    """Sent every 30 s; the server drops a connection that sends none for about 70 s."""
    return encode(Op.HEARTBEAT, b"")


def decode(data: bytes, _depth: int = 0) -> list[Packet]:
    """Every packet in a frame, compressed runs expanded in place (in order)."""
    packets: list[Packet] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise PacketError(f"{len(data) - offset} bytes left, less than a header")
        length, header_len, ver, op, _seq = HEADER.unpack_from(data, offset)
        if op == Op.HEARTBEAT_REPLY and header_len >= HEADER.size and offset + header_len + 4 <= len(data):
            # the popularity, then (outside the stated length, on the live server) an echo of our
            # heartbeat's body: the rest of the frame is not a packet
            packets.append(Packet(op, ver, data[offset + header_len: offset + header_len + 4]))
            break
        if header_len < HEADER.size or length < header_len or offset + length > len(data):
            raise PacketError(f"bad packet lengths (length {length}, header {header_len}) at byte {offset}")
        body = data[offset + header_len: offset + length]
        offset += length
        if op == Op.MESSAGE and ver in (Ver.ZLIB, Ver.BROTLI):
            if _depth > 0:
                raise PacketError("a compressed run inside a compressed run")
            packets.extend(decode(_inflate(body, ver), _depth + 1))
        else:
            packets.append(Packet(op, ver, body))
    return packets


def commands(packets: list[Packet]) -> Iterator[dict]:
    """The JSON commands among decoded packets ({"cmd": "DANMU_MSG", ...})."""
    for p in packets:
        if p.op == Op.MESSAGE and p.ver in (Ver.JSON, Ver.PLAIN) and p.body:
            yield p.json()


def _inflate(body: bytes, ver: int) -> bytes:
    try:
        if ver == Ver.ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(body, MAX_DECOMPRESSED + 1)
            if len(out) > MAX_DECOMPRESSED or d.unconsumed_tail:
                raise PacketError(f"a compressed frame expands past {MAX_DECOMPRESSED} bytes")
            return out
        import brotli  # the `bilibili` extra; only this bridge needs it

        dec = brotli.Decompressor()
        parts: list[bytes] = []
        size = 0
        for i in range(0, len(body), _CHUNK):  # small steps: a bomb is stopped near the limit
            part = dec.process(body[i:i + _CHUNK])
            size += len(part)
            if size > MAX_DECOMPRESSED:
                raise PacketError(f"a compressed frame expands past {MAX_DECOMPRESSED} bytes")
            parts.append(part)
        return b"".join(parts)
    except (zlib.error, ValueError) as exc:
        if isinstance(exc, PacketError):
            raise
        raise PacketError(f"cannot decompress a version {ver} body: {exc}") from None
    except Exception as exc:  # brotli.error is not a ValueError
        raise PacketError(f"cannot decompress a version {ver} body: {exc}") from None
