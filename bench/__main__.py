"""`python -m bench ttfa|interrupt|capacity|idle|peer|all [--quick] [--ramps N]`

Prints tables, writes bench/results/<mode>.json (and <mode>.png where a curve says more).
`all` also runs the benchmarks other modules provide (engines, barge_in, chat_latency, chat_flood)
where they exist.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
import warnings

MODES = ("ttfa", "interrupt", "capacity", "idle", "peer")
OTHER_MODULES = ("engines", "barge_in", "chat_latency", "chat_flood")  # written elsewhere; run by `all` when present


def _run_other(name: str, quick: bool) -> None:
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            print(f"\n[{name}] not present, skipped")
            return
        raise
    main = getattr(module, "main", None)
    if main is None:
        print(f"\n[{name}] has no main(), skipped")
        return
    params = inspect.signature(main).parameters
    try:
        if "quick" in params:
            main(quick=quick)
        elif params:
            main(["--quick"] if quick else [])  # an argv-style main
        elif not quick:
            main()
        else:
            print(f"\n[{name}] takes no --quick; skipped at quick scale")
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(f"\n[{name}] exited with {exc.code}" + (" (no --quick option: skipped at quick scale)" if quick else ""))
    except Exception as exc:  # another module's failure must not hide this run's figures
        print(f"\n[{name}] failed: {exc!r}")


def run(mode: str, quick: bool, ramps: int = 1) -> None:
    warnings.filterwarnings("ignore", message=".*HMAC key.*")  # the dev key pair is short by design
    if mode == "all":
        t0 = time.perf_counter()
        from . import capacity, idle, interrupt, peer_pipecat, ttfa

        ttfa_result = ttfa.main(quick)
        interrupt.main(quick)
        capacity_result = capacity.main(quick, ramps=ramps)
        idle.main(quick)
        peer_pipecat.main(quick, ours_ttfa=ttfa_result, ours_capacity=capacity_result)
        for name in OTHER_MODULES:
            _run_other(name, quick)
        print(f"\nall: {time.perf_counter() - t0:.0f} s")
        return
    module = importlib.import_module(f"bench.{'peer_pipecat' if mode == 'peer' else mode}")
    if mode == "capacity":
        module.main(quick, ramps=ramps)
    else:
        module.main(quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=(*MODES, "all"))
    parser.add_argument("--quick", action="store_true", help="tiny scale: seconds per mode (the smoke test)")
    parser.add_argument("--ramps", type=int, default=1, help="capacity: ramps on fresh servers, median reported")
    args = parser.parse_args(argv)
    run(args.mode, args.quick, args.ramps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
