"""`tts-agent voices pull NAME...`: fetch Piper voices from the Piper voice catalogue.

The catalogue (`voices.json` beside the files) lists each voice's files with their size and
digest; every file is downloaded to a `.part` file, checked against that digest, and only
then renamed into the voices folder, so an interrupted or corrupt download never shows up as
a voice. Offline, the first request fails at once with a message saying so.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import httpx

from .piper import default_voices_dir

CATALOGUE_ENV = "TTS_AGENT_PIPER_CATALOGUE"
DEFAULT_CATALOGUE = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"
CONNECT_TIMEOUT_S = 5.0


class PullError(Exception):
    """A voice could not be fetched; the message is for the user."""


def _catalogue(client: httpx.Client, base: str) -> dict:
    url = f"{base}/voices.json"
    try:
        resp = client.get(url)
        resp.raise_for_status()
        return resp.json()
    except httpx.TransportError as exc:
        raise PullError(f"cannot reach the Piper voice catalogue at {url} ({exc.__class__.__name__}: {exc}); "
                        "`voices pull` needs internet access. Offline, copy NAME.onnx and NAME.onnx.json "
                        "into a voices folder instead.") from None
    except httpx.HTTPStatusError as exc:
        raise PullError(f"the Piper voice catalogue at {url} answered {exc.response.status_code}") from None
    except ValueError:
        raise PullError(f"the Piper voice catalogue at {url} is not JSON") from None


def _check_digest(path: Path, info: dict, hashers: dict[str, "hashlib._Hash"]) -> None:
    # The upstream catalogue publishes MD5; a catalogue may also give SHA-256.
    for key, algo in (("sha256_digest", "sha256"), ("md5_digest", "md5")):
        expected = info.get(key)
        if expected and hashers[algo].hexdigest() != expected.lower():
            raise PullError(f"{path.name}: {algo} {hashers[algo].hexdigest()} does not match the catalogue's {expected}")
    if not (info.get("sha256_digest") or info.get("md5_digest")):
        raise PullError(f"{path.name}: the catalogue gives no digest, refusing an unchecked file")


def _download(client: httpx.Client, url: str, target: Path, info: dict, progress: bool) -> None:
    from tqdm import tqdm

    part = target.with_name(target.name + ".part")
    hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    try:
        with client.stream("GET", url) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or info.get("size_bytes") or 0) or None
            with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                                               disable=not progress, file=sys.stderr) as bar:
                for block in resp.iter_bytes(1 << 16):
                    out.write(block)
                    for h in hashers.values():
                        h.update(block)
                    bar.update(len(block))
        _check_digest(target, info, hashers)
        os.replace(part, target)
    except httpx.HTTPError as exc:
        raise PullError(f"downloading {url} failed: {exc}") from None
    finally:
        part.unlink(missing_ok=True)


def pull(names: list[str], dest: Path, base: str, *, force: bool = False, progress: bool = True,
         timeout: float = CONNECT_TIMEOUT_S) -> list[Path]:
    """Fetch each named voice into `dest`; returns the `.onnx` paths. Raises PullError before
    writing anything when a name is unknown or the catalogue cannot be reached."""
    base = base.rstrip("/")
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=timeout), follow_redirects=True) as client:
        catalogue = _catalogue(client, base)
        unknown = [n for n in names if n not in catalogue]
        if unknown:
            raise PullError(f"not in the Piper voice catalogue: {', '.join(unknown)}")
        dest.mkdir(parents=True, exist_ok=True)
        pulled = []
        for name in names:
            for rel, info in sorted(catalogue[name].get("files", {}).items()):
                fname = Path(rel).name
                if not fname.endswith((".onnx", ".onnx.json")):
                    continue  # model cards, samples
                target = dest / fname
                if target.exists() and not force:
                    continue
                _download(client, f"{base}/{rel}", target, info, progress)
            onnx = dest / f"{name}.onnx"
            if not (onnx.is_file() and onnx.with_name(onnx.name + ".json").is_file()):
                raise PullError(f"{name}: the catalogue lists no .onnx/.onnx.json pair")
            pulled.append(onnx)
        return pulled


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        paths = pull(args.names, Path(args.dir).expanduser(), args.catalogue, force=args.force,
                     progress=sys.stderr.isatty() and not args.quiet)
    except PullError as exc:
        print(f"tts-agent: {exc}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"{p}\tpiper:{p.name[: -len('.onnx')]}")
    return 0


def register(voices_subparsers) -> None:
    p = voices_subparsers.add_parser("pull", help="download Piper voices from the Piper voice catalogue")
    p.add_argument("names", nargs="+", metavar="NAME", help="voice name, e.g. en_US-lessac-medium")
    p.add_argument("--dir", default=str(default_voices_dir()), help="voices folder (default: %(default)s)")
    p.add_argument("--catalogue", default=os.environ.get(CATALOGUE_ENV, DEFAULT_CATALOGUE),
                   help=f"catalogue base URL (default ${CATALOGUE_ENV} or {DEFAULT_CATALOGUE})")
    p.add_argument("--force", action="store_true", help="download again even if the files exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pull)
