"""`aiozcrx serve module:app --workers N --queues A-B --interface IF --port P --user U`.

A thin layer over :class:`aiozcrx.workers.Launcher`: every option is checked and
every typed error (an engine that cannot run, RLIMIT_MEMLOCK too small, a worker
that could not prepare its queue) is one line on stderr with the fix, exit
status 2, before anything serves; 0 after a graceful stop (SIGTERM, ^C).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..config import parse_size

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="aiozcrx serve",
                 description="Serve an ASGI app (module:app) or an asyncio protocol factory "
                             "(module:factory, factory() returns a protocol factory) in N worker "
                             "processes, one per NIC queue: each prepares its zcrx queue while "
                             "privileged, then runs as --user with no capability (docs/workers.md).")
    ap.add_argument("app", help="module:app (ASGI, served by uvicorn's HTTP protocol) or module:factory")
    ap.add_argument("--workers", type=int, help="worker processes (default: one per --queues queue)")
    ap.add_argument("--queues", help="the NIC's RX queues, FIRST-LAST (e.g. 0-3): one worker each")
    ap.add_argument("--interface", help="the NIC (with --queues)")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--user", help="the workers' user (needed when the launcher is root), e.g. nobody")
    ap.add_argument("--group", help="the workers' group (default: the user's)")
    ap.add_argument("--engine", default="auto", choices=("auto", "zcrx", "zcrx-copy", "uring", "socket"),
                    help="auto: zcrx where the launcher may register queues, else the best that "
                         "works (each worker's fallback_reason says why)")
    ap.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    ap.add_argument("--app-kind", default="auto", choices=("auto", "asgi", "protocol"))
    ap.add_argument("--area-size", type=_size, help="receive memory per worker, e.g. 64M")
    ap.add_argument("--rq-entries", type=int, help="refill ring entries per worker")
    ap.add_argument("--stats-json", help="write the workers' stats here at start, on SIGUSR1, at exit")
    ap.add_argument("--graceful-timeout", type=float, default=30.0,
                    help="seconds a stopping worker waits for its connections (default 30)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ..errors import AiozcrxError  # noqa: PLC0415
    from .launcher import Launcher  # noqa: PLC0415
    try:
        launcher = Launcher(args.app, workers=args.workers, queues=args.queues, interface=args.interface,
                            host=args.host, port=args.port, user=args.user, group=args.group,
                            engine=args.engine, loop=args.loop, area_size=args.area_size,
                            rq_entries=args.rq_entries, stats_json=args.stats_json,
                            graceful_timeout=args.graceful_timeout, app_kind=args.app_kind)
        return launcher.run()
    except (ValueError, AiozcrxError, OSError) as exc:
        print(f"aiozcrx serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
