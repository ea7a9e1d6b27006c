"""One demo archive site as a long-running server (the compose file's archive services).

    python -m examples.lofar.site --name SURF --subbands 0:12 --size 8M --port 8000

Writes the synthetic subband tars and manifest.json under ``--root`` (once:
existing content is served as it is) and serves them over HTTP with ranged GET.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web

from examples.lofar.archive import MANIFEST_NAME, OBSERVATION, write_site
from examples.lofar.pipeline import parse_size

__all__ = ["main"]


def _subbands(text: str) -> list[int]:
    first, _, last = text.partition(":")
    try:
        return list(range(int(first), int(last))) if last else [int(first)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST:END, e.g. 0:12") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.lofar.site", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the site's name, e.g. SURF")
    parser.add_argument("--subbands", type=_subbands, default=_subbands("0:12"),
                        metavar="FIRST:END", help="subbands this site holds (default 0:12)")
    parser.add_argument("--size", type=parse_size, default=parse_size("8M"))
    parser.add_argument("--root", type=Path, default=Path("/srv/archive"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    manifest = args.root / "lta" / OBSERVATION / MANIFEST_NAME
    if not manifest.exists():
        write_site(args.root, args.name, args.subbands, args.size)
    count = len(json.loads(manifest.read_text())["files"])
    print(f"{args.name}: {count} subbands at http://{args.host}:{args.port}/lta/{OBSERVATION}/",
          flush=True)
    app = web.Application()
    app.router.add_static("/", args.root)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
