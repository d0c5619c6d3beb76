"""`tts-agent bridge irc|bilibili|jsonl`: read a live chat into a room (agent/cli.py registers this)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .lines import LineFilter
from .sink import AdminToken, BridgeError, SpeakSink

log = logging.getLogger("tts_agent.bridge")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--room", required=True, help="the room to speak into")
    p.add_argument("--agent-url", default="http://127.0.0.1:8080", help="the control plane (default %(default)s)")
    p.add_argument("--token", help="an admin token (video.roomAdmin); default: minted from --api-key/--api-secret")
    p.add_argument("--api-key", default="devkey", help="API key to mint an admin token (default: the dev pair)")
    p.add_argument("--api-secret", default="secret", help="API secret to mint an admin token")
    p.add_argument("--ignore-sender", action="append", default=[], metavar="NAME",
                   help="never read lines from this sender, e.g. another bot (repeatable)")
    p.add_argument("--command-prefix", default="!",
                   help="lines starting with this are chat commands, not read (default %(default)r; '' reads all)")
    p.add_argument("--strip-links", action="store_true", help="remove URLs from lines before they are read")
    p.add_argument("--mention", action="append", default=[], metavar="NAME",
                   help="lines that mention NAME (the streamer, with or without @) go first (repeatable)")
    p.add_argument("--max-backlog", type=int, default=1000,
                   help="lines held while the agent is unreachable or busy (default %(default)s)")
    p.add_argument("--metrics-port", type=int, help="serve this bridge's Prometheus counters on 127.0.0.1:PORT")
    p.add_argument("--verbose", "-v", action="store_true", help="log every line and what became of it")
    p.add_argument("--log-format", choices=["text", "json"], default="text")


def register(sub) -> None:
    bridge = sub.add_parser("bridge", help="read a live chat (IRC/Twitch, Bilibili, JSON lines) into a room")
    bsub = bridge.add_subparsers(dest="bridge_command", required=True)

    irc = bsub.add_parser("irc", help="an IRC channel (Twitch chat: --server irc.chat.twitch.tv:6697 --tls); "
                                      "Twitch's message ids, bits, subs and moderation are read when offered")
    irc.add_argument("--server", required=True, help="HOST:PORT of the IRC server")
    irc.add_argument("--tls", action="store_true", help="connect with TLS")
    irc.add_argument("--no-tls-verify", action="store_true", help="accept any TLS certificate (self-signed test servers)")
    irc.add_argument("--channel", required=True, help="the channel to read, e.g. '#name'")
    irc.add_argument("--nick", help="nickname (default: an anonymous read-only justinfan<digits>)")
    irc.add_argument("--password", help="server password (Twitch: oauth:<token>); default none")
    _common(irc)
    irc.set_defaults(func=cmd_irc)

    bili = bsub.add_parser("bilibili", help="a Bilibili live room's danmaku, gifts and super chats")
    bili.add_argument("--live-room", type=int, required=True, help="the live room id from its URL")
    bili.add_argument("--uid", type=int, default=0, help="Bilibili user id of the --sessdata login (default 0)")
    bili.add_argument("--sessdata", help="SESSDATA cookie of a logged-in account (Bilibili hides names without one)")
    bili.add_argument("--gift-template", help="text for a gift; {from} {gift} {num} {price} (default 送出{num}个{gift})")
    bili.add_argument("--guard-template", help="text for a guard purchase (default 开通了{gift})")
    bili.add_argument("--superchat-template", help="text for a super chat; {text} {price} (default {price}元醒目留言：{text})")
    bili.add_argument("--free-gifts", action="store_true", help="also read free (silver coin) gifts")
    _common(bili)
    bili.set_defaults(func=cmd_bilibili)

    jsonl = bsub.add_parser("jsonl", help='stdin, one {"from": "...", "text": "..."} per line')
    _common(jsonl)
    jsonl.set_defaults(func=cmd_jsonl)


def _sink(args, bridge: str) -> SpeakSink:
    if args.max_backlog < 1:
        sys.exit("tts-agent bridge: --max-backlog must be at least 1")
    token = AdminToken(token=args.token, api_key=args.api_key, api_secret=args.api_secret, room=args.room)
    line_filter = LineFilter(args.ignore_sender, args.command_prefix, args.strip_links, args.mention)
    return SpeakSink(args.agent_url, args.room, token, bridge=bridge, line_filter=line_filter,
                     max_backlog=args.max_backlog, verbose=args.verbose)


def _setup(args) -> None:
    from agent.logs import setup_logging

    setup_logging(args.log_format, "INFO")
    # httpx logs every request: only with --verbose
    logging.getLogger("httpx").setLevel(logging.INFO if args.verbose else logging.ERROR)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1")


async def _serve(source, sink: SpeakSink) -> int:
    """Run a chat source until it ends or the sink fails for good (the agent refused the token)."""
    reader = asyncio.create_task(source)
    worker = sink.start()
    # SIGTERM (systemd, docker stop) ends the bridge like Ctrl-C: counts logged, connections closed
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, reader.cancel)
    try:
        await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            raise worker.exception()
        return reader.result() if reader.done() and not reader.cancelled() else 0
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        log.info("%s: %s", sink.bridge, sink.summary())
        await sink.close()


def _run(main) -> int:
    try:
        return asyncio.run(main())
    except BridgeError as exc:
        print(f"tts-agent bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_irc(args) -> int:
    from .irc import IrcBridge

    _setup(args)

    async def main() -> int:
        sink = _sink(args, "irc")
        try:
            bridge = IrcBridge(args.server, args.channel, sink, tls=args.tls, tls_verify=not args.no_tls_verify,
                               nick=args.nick, password=args.password)
        except ValueError as exc:
            await sink.close()
            sys.exit(f"tts-agent bridge irc: {exc}")
        return await _serve(bridge.run(), sink)

    return _run(main)


def cmd_bilibili(args) -> int:
    try:
        import brotli  # noqa: F401  (Bilibili's brotli bodies)
    except ImportError as exc:
        sys.exit(f"tts-agent bridge bilibili: needs brotli (pip install 'tts-agent[bilibili]'): {exc}")
    from .bilibili import BilibiliBridge, Templates

    _setup(args)
    defaults = Templates()
    templates = Templates(gift=args.gift_template or defaults.gift, guard=args.guard_template or defaults.guard,
                          superchat=args.superchat_template or defaults.superchat)

    async def main() -> int:
        sink = _sink(args, "bilibili")
        try:
            bridge = BilibiliBridge(args.live_room, sink, templates=templates, free_gifts=args.free_gifts,
                                    uid=args.uid, sessdata=args.sessdata)
        except ValueError as exc:
            await sink.close()
            sys.exit(f"tts-agent bridge bilibili: {exc}")
        return await _serve(bridge.run(), sink)

    return _run(main)


def cmd_jsonl(args) -> int:
    from .jsonl import run_jsonl

    _setup(args)

    async def main() -> int:
        sink = _sink(args, "jsonl")
        await _serve(run_jsonl(sys.stdin.buffer, sink), sink)
        return 0  # malformed lines were reported and skipped; the input was read to its end

    return _run(main)
