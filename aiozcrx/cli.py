"""`aiozcrx` / `python -m aiozcrx`: demo, recv, send, doctor, nic, serve (aiozcrx/workers/cli.py).

``doctor``, ``nic`` and ``send`` need only the standard library; ``demo`` and
``recv`` need the compiled core and import it inside the command, saying so (exit
status 2) where it cannot be loaded (see :mod:`aiozcrx.tools`).

``recv`` and ``demo`` check every option (and open the Receiver) before they bind
or accept anything. Whatever goes wrong is one line on stderr, never a traceback;
the exit status says what kind of thing it was: 0 done, 1 the transfer failed (the
connection was reset, ``--verify`` found other bytes), 2 it could not start (a bad
option, an engine that cannot run here, a port in use), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from .config import ENGINES, Config, parse_size

if TYPE_CHECKING:
    from .receiver import Receiver

BLOCK = 1 << 20
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130



class Failure(Exception):
    """A one-line error and the exit status it ends the command with."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line (argparse's default adds the whole usage), status 2
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _pattern_block() -> bytes:
    # the sender repeats a 256-byte ramp: byte i of the stream is i % 256
    return bytes(range(256)) * (BLOCK // 256)


def pattern_sha256(total: int) -> str:
    """The sha256 of the first ``total`` bytes of what ``aiozcrx send`` sends."""
    block = _pattern_block()
    h = hashlib.sha256()
    for _ in range(total // BLOCK):
        h.update(block)
    h.update(block[:total % BLOCK])
    return h.hexdigest()


# ------------------------------------------------------------------ option types
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0: any free port), got {port}")
    return port


def _queue(text: str) -> int:
    try:
        queue = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"queue must be a queue number like 16, got {text!r}") from None
    if queue < 0:
        raise argparse.ArgumentTypeError(f"queue must be 0 or more, got {queue}")
    return queue


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mib(text: str) -> int:
    try:
        mib = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    if mib < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more MiB, got {mib}")
    return mib


def _option_names(message: str) -> str:
    """Config's words for its arguments, as the options that set them."""
    for word, option in (("engine='zcrx'", "--engine zcrx"),
                         ("area_size", "--area-size"), ("buf_size", "--buf-size"),
                         ("queue=", "--queue"), ("interface=", "--interface")):
        message = message.replace(word, option)
    return message


def _receiver_config(args: argparse.Namespace) -> Config:
    """The Receiver settings the options ask for, checked as the Receiver checks them;
    an interface or queue this machine lacks is an error here even with engine auto
    (it was typed on the command line: a typo, not a machine without the NIC)."""
    try:
        cfg = Config(engine=args.engine, interface=getattr(args, "interface", None),
                     queue=getattr(args, "queue", None),
                     area_size=getattr(args, "area_size", None),
                     buf_size=getattr(args, "buf_size", Config.buf_size)).validate()
    except (TypeError, ValueError) as exc:
        raise Failure(_option_names(str(exc)), EXIT_USAGE) from None
    problem = cfg.nic_problem()
    if problem is not None:
        raise Failure(problem, EXIT_USAGE)
    return cfg


def _listen_address(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_USAGE) from None
    family, _, _, _, addr = infos[0]
    return family, addr


# ----------------------------------------------------------------------- recv
class _Sink(asyncio.Protocol):
    """Counts (and with ``verify`` hashes) what arrives; the views are read in place."""

    def __init__(self, done: asyncio.Future[Exception | None], verify: bool):
        self.done = done
        self.bytes = 0
        self.sha = hashlib.sha256() if verify else None

    def data_received(self, view: bytes | memoryview) -> None:
        if self.sha is not None:
            self.sha.update(view)   # C, straight from the registered area; no copy
        self.bytes += len(view)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def _receive(rx: Receiver, conn: socket.socket, peer: str, verify: bool, progress: bool) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Exception | None] = loop.create_future()
    t0 = time.perf_counter()
    _, sink = await rx.wrap(conn, lambda: _Sink(done, verify))
    last = (t0, 0)
    while not done.done():
        await asyncio.wait([done], timeout=1.0)
        if progress:
            now = time.perf_counter()
            rate = (sink.bytes - last[1]) / (now - last[0]) / 1e9
            last = (now, sink.bytes)
            print(f"\r{sink.bytes / 1e9:8.2f} GB  {rate:6.2f} GB/s", end="", file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    if progress:
        print(file=sys.stderr)
    exc = done.result()
    completions = rx.stats()["completions"]
    if exc is not None:
        raise Failure(f"connection from {peer} lost after {sink.bytes} bytes: {exc}")
    print(f"received {sink.bytes} bytes in {dt:.3f} s = {sink.bytes / dt / 1e9:.2f} GB/s "
          f"({completions} completions) from {peer}", flush=True)
    if sink.sha is not None:
        got = sink.sha.hexdigest()
        print(f"sha256: {got}", flush=True)
        want = pattern_sha256(sink.bytes)  # after the clock stopped: not in the rate
        if got != want:
            print(f"verify: MISMATCH: the {sink.bytes} bytes `aiozcrx send` sends have sha256 {want}",
                  flush=True)
            return EXIT_FAILED
        print("verify: OK", flush=True)
    return EXIT_OK


def _on_signals(task: asyncio.Task[Any]) -> None:
    """Ctrl-C / SIGTERM cancel the command (its Receiver closes); no traceback."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


async def _recv(args: argparse.Namespace, cfg: Config) -> int:
    from aiozcrx import EngineUnavailable, Receiver  # noqa: PLC0415 - the compiled core, lazily

    current = asyncio.current_task()
    assert current is not None
    _on_signals(current)
    family, addr = _listen_address(args.host, args.port)
    loop = asyncio.get_running_loop()
    try:
        rx = Receiver(**cfg.receiver_options())
        rx.open()
    except EngineUnavailable as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    try:
        try:
            lst = socket.create_server(addr, family=family)
        except OSError as exc:
            raise Failure(f"cannot listen on {args.host}:{args.port}: "
                          f"{os.strerror(exc.errno) if exc.errno else exc}",
                          EXIT_USAGE) from None
        with lst:
            lst.setblocking(False)
            # the engine first: "listening on" is the last line before a connection
            print(f"engine: {rx.engine}; fallback: {rx.fallback_reason or '(none)'}", flush=True)
            print(f"listening on {args.host}:{lst.getsockname()[1]}", flush=True)
            conn, peer = await loop.sock_accept(lst)
        return await _receive(rx, conn, f"{peer[0]}:{peer[1]}", args.verify, progress=True)
    finally:
        await rx.aclose()


# ----------------------------------------------------------------------- demo
async def _demo(args: argparse.Namespace, cfg: Config) -> int:
    """``aiozcrx recv --verify`` and ``aiozcrx send`` over loopback in one command."""
    from aiozcrx import EngineUnavailable, Receiver  # noqa: PLC0415 - the compiled core, lazily

    current = asyncio.current_task()
    assert current is not None
    _on_signals(current)
    loop = asyncio.get_running_loop()
    try:
        rx = Receiver(engine=cfg.engine)
        rx.open()
    except EngineUnavailable as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    try:
        print(f"engine: {rx.engine}")
        print(f"fallback reason: {rx.fallback_reason or '(none: first choice)'}", flush=True)
        with socket.create_server(("127.0.0.1", 0)) as lst:
            lst.setblocking(False)
            port = lst.getsockname()[1]
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aiozcrx", "send", "--host", "127.0.0.1", "--port", str(port),
                "--mib", str(args.mib), stdout=asyncio.subprocess.DEVNULL)
            try:
                conn, peer = await loop.sock_accept(lst)
            except BaseException:
                sender.kill()
                await sender.wait()
                raise
        status = await _receive(rx, conn, f"{peer[0]}:{peer[1]}", verify=True, progress=False)
        if await sender.wait() != 0:
            raise Failure(f"the sender (aiozcrx send) exited with status {sender.returncode}")
        return status
    finally:
        await rx.aclose()


# ----------------------------------------------------------------------- send
def _send(args: argparse.Namespace) -> int:
    block = _pattern_block()
    total = args.mib * BLOCK
    t0 = time.perf_counter()
    sent = 0
    try:
        with socket.create_connection((args.host, args.port)) as s:
            while sent < total:
                n = min(BLOCK, total - sent)
                s.sendall(block[:n])
                sent += n
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        if sent:
            raise Failure(f"connection to {where} lost after {sent} bytes: {exc.strerror or exc}") from None
        raise Failure(f"cannot connect to {where}: {exc.strerror or exc}") from None
    dt = time.perf_counter() - t0
    print(f"sent {total} bytes in {dt:.3f} s = {total / dt / 1e9:.2f} GB/s")
    return EXIT_OK


def _core_missing(cmd: str) -> str | None:
    """None if the compiled core loads, else the message for ``aiozcrx cmd``."""
    try:
        from aiozcrx import Receiver  # noqa: F401, PLC0415 - the compiled core, lazily
    except ImportError as exc:
        return (f"the compiled core could not be loaded ({exc}); "
                f"`aiozcrx doctor` and `aiozcrx nic` work without it")
    return None


def _parser() -> _Parser:
    ap = _Parser(prog="aiozcrx", description="io_uring zero-copy receive for asyncio",
                 epilog="exit status: 0 done, 1 the transfer failed, 2 could not start "
                        "(bad option, engine unavailable, port in use), 130 interrupted")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="check what zero copy needs here (see `aiozcrx doctor -h`)")
    sub.add_parser("nic", help="set up / tear down NIC queues for zcrx (see `aiozcrx nic -h`)")
    sub.add_parser("serve", help="N unprivileged workers on N NIC queues (see `aiozcrx serve -h`)")
    engines = ("auto", *ENGINES)
    d = sub.add_parser("demo", help="loopback demo: `aiozcrx send` in a process, a verified receive here")
    d.add_argument("--mib", type=_mib, default=1024, help="MiB to send (default 1024)")
    # over loopback: no NIC queue, so no engine "zcrx"
    d.add_argument("--engine", default="auto", choices=[e for e in engines if e != "zcrx"])
    r = sub.add_parser("recv", help="bulk sink for one connection (like liburing's examples/zcrx)")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=_port, default=9999, help="0: any free port (printed)")
    r.add_argument("--interface", help="the NIC whose queue receives (engine zcrx)")
    r.add_argument("--queue", type=_queue, help="its hardware RX queue (needs --interface)")
    r.add_argument("--engine", default="auto", choices=engines)
    r.add_argument("--area-size", type=_size, default=None,
                   help="receive memory, e.g. 32M (default 32M; 64M for engine zcrx on a NIC queue)")
    r.add_argument("--buf-size", type=_size, default=Config.buf_size,
                   help="buffer size of the uring/socket engines, e.g. 64K (default %(default)s)")
    r.add_argument("--verify", action="store_true",
                   help="hash what arrives (sha256, printed) and check it is `aiozcrx send`'s pattern")
    s = sub.add_parser("send", help="matching sender")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=9999)
    s.add_argument("--mib", type=_mib, default=1024)
    return ap


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "send":
        if args.port == 0:
            raise Failure("--port: the port to send to must be 1..65535, got 0", EXIT_USAGE)
        return _send(args)
    cfg = _receiver_config(args)  # demo has --engine only: the rest default
    why = _core_missing(args.cmd)
    if why:
        raise Failure(why, EXIT_USAGE)
    try:
        return asyncio.run(_demo(args, cfg) if args.cmd == "demo" else _recv(args, cfg))
    except asyncio.CancelledError:
        raise Failure("interrupted", EXIT_INTERRUPTED) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "doctor":
        from .tools import doctor
        return doctor.main(argv[1:])
    if argv and argv[0] == "nic":
        from .tools import nic
        return nic.main(argv[1:])
    if argv and argv[0] == "serve":
        from .workers import cli as serve_cli
        return serve_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except Failure as exc:
        print(f"aiozcrx {args.cmd}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # before the loop's handler was in place, or in send
        print(f"aiozcrx {args.cmd}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed under us (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:
        print(f"aiozcrx {args.cmd}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, naming it
        print(f"aiozcrx {args.cmd}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
