"""`tts-agent` (also `python -m agent`): serve, voices, worker, join, bridge."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or JSON settings file (flags and TTS_AGENT_* override it)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--voice", help="default voice id or language tag")
    p.add_argument("--voices-dir", action="append", dest="voices_dir", help="folder of Piper voices (repeatable)")
    p.add_argument("--ice-address", action="append", dest="ice_addresses",
                   help="ICE host candidate address to offer (repeatable; e.g. the public IP behind NAT)")
    p.add_argument("--public-url", help="URL clients use to reach this agent")
    p.add_argument("--livekit-url", help="LiveKit server URL (LiveKit mode)")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level")


def _settings(args):
    from .settings import load_settings

    overrides = {k: getattr(args, k, None) for k in
                 ("host", "port", "voice", "voices_dir", "ice_addresses", "public_url", "livekit_url",
                  "log_format", "log_level")}
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        sys.exit("tts-agent: invalid settings:\n" + "\n".join(lines))
    except (OSError, ValueError) as exc:
        sys.exit(f"tts-agent: cannot read settings: {exc}")


def cmd_serve(args) -> int:
    import uvicorn

    from control_api import create_app

    from .logs import setup_logging
    from .runtime import Agent
    from .settings import DEV_KEY, DEV_SECRET

    settings = _settings(args)
    setup_logging(settings.log_format, settings.log_level)
    agent = Agent(settings)
    app = create_app(agent)
    base = settings.base_url
    print(f"tts-agent: demo at {base}/demo  (API docs at {base}/docs)", flush=True)
    if settings.dev_mode:
        print(f"tts-agent: dev mode, API key {DEV_KEY} / secret {DEV_SECRET} (loopback only)", flush=True)
    print(f"tts-agent: default voice {agent.voices.default_voice.id if agent.voices.default_voice else 'none'}",
          flush=True)
    import signal

    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done: exit 0 instead
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False, timeout_graceful_shutdown=5, log_config=None)
    return 0


def cmd_voices_list(args) -> int:
    from engines import default_engines

    settings = _settings(args)
    for engine in default_engines(settings):
        if not engine.available:
            print(f"# {engine.name}: unavailable ({engine.unavailable_reason})")
            continue
        voices = engine.voices()
        print(f"# {engine.name}: {len(voices)} voices")
        for v in voices:
            origin = getattr(engine, "origin", lambda _v: "")(v)
            print(f"{v.id}\t{v.language}\t{v.name}" + (f"\t{origin}" if origin else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-agent", description="Speak text into WebRTC rooms.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the control plane and the embedded rooms")
    _add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    voices = sub.add_parser("voices", help="list or fetch voices")
    vsub = voices.add_subparsers(dest="voices_command", required=True)
    vlist = vsub.add_parser("list", help="installed voices and where they come from")
    _add_settings_flags(vlist)
    vlist.set_defaults(func=cmd_voices_list)
    _register_optional(sub, vsub)
    return parser


def _register_optional(sub, vsub) -> None:
    """Subcommands that live in their own modules (LiveKit worker, chat bridges, voice pull)."""
    import importlib

    for module, attr in (("agent.transports.livekit_cli", "register"), ("bridges.cli", "register"),
                         ("engines.piper_cli", "register")):
        try:
            register = getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
        register(vsub if module.startswith("engines") else sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
