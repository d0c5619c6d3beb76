"""`python -m bench.piper_agent [--whole-piece] serve ...`: the agent's own CLI, with Piper's
streaming turned off when asked, so a bench can run both ways side by side. Bench-only."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if "--whole-piece" in argv:
        argv.remove("--whole-piece")
        from engines.piper import PiperEngine

        PiperEngine.STREAMING_DEFAULT = False
    from agent.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
