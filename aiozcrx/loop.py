"""The drop-in event loop: unmodified servers receive through aiozcrx.

    aiozcrx.run(main())                                         # asyncio.run, this loop
    uvicorn app:app --loop aiozcrx:new_event_loop
    asyncio.run(main(), loop_factory=aiozcrx.new_event_loop)    # 3.12+
    web.run_app(app, loop=aiozcrx.new_event_loop())            # aiohttp

``new_event_loop()`` makes a loop (uvloop's when it is installed, else asyncio's
own) whose ``create_server``, ``create_connection``, ``connect_accepted_socket``
and ``start_tls`` give aiozcrx transports (TCP, with or without TLS): every
server gets a Receiver of its own, client connections and
``connect_accepted_socket`` share one per loop. Everything else is the base
loop's. Other people's protocols were written for ``bytes``: they get ``bytes``
(one copy in user space, the buffer back to the kernel at once); protocols that
opt in (``aiozcrx.ViewProtocol``, or ``aiozcrx_views = True``) get views.

Settings, from the environment (read when the loop is made, validated at once):

  AIOZCRX_ENGINE      auto (default), zcrx, zcrx-copy, uring, socket
  AIOZCRX_INTERFACE   NIC for engine zcrx, with AIOZCRX_QUEUE
  AIOZCRX_QUEUE       its hardware queue
  AIOZCRX_AREA_SIZE   bytes per Receiver, e.g. 64M (default 32M; 64M on a NIC queue)
  AIOZCRX_BUF_SIZE    buffer size for engines uring/socket, e.g. 64K
  AIOZCRX_VIEWS       opt-in (default) or always
  AIOZCRX_MAX_HELD    bytes of views one connection may hold (default: area / 4)
  AIOZCRX_LOOP        uvloop (default when installed) or asyncio
  AIOZCRX_WAKE        auto (default), eventfd, socket: how the ring engines wake
                      (read by every Receiver with wake="auto"; engines/wake.py)

TLS (``ssl=``, ``loop.start_tls``) over TCP is asyncio's own SSL protocol on a
ZcrxTransport (on either base loop): the ciphertext is copied once out of the
receive area and the protocol gets plaintext ``bytes`` (no zero copy for TLS
payload). Unix sockets go through the base loop's own transports.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl as _ssl
import sys
import weakref
from typing import IO, TYPE_CHECKING, Any, Callable, Coroutine, Mapping, Optional, TypeVar, cast

from .config import Config, parse_size, socket_family

if TYPE_CHECKING:
    from .receiver import Receiver
    from .server import ZcrxServer

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

ENV_PREFIX = "AIOZCRX_"
_T = TypeVar("_T")


def _size(name: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise ValueError(f"{ENV_PREFIX}{name}={text!r}: {e}") from None


def config_from_env(environ: Mapping[str, str] = os.environ) -> tuple[Config, str]:
    """The Receiver settings and the base loop the environment asks for."""
    kw: dict[str, Any] = {"views": "opt-in"}

    def get(k: str) -> str:
        return environ.get(ENV_PREFIX + k) or ""  # empty means unset

    if get("ENGINE"):
        kw["engine"] = get("ENGINE")
    if get("INTERFACE"):
        kw["interface"] = get("INTERFACE")
    if get("QUEUE"):
        try:
            kw["queue"] = int(get("QUEUE"))
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}QUEUE={get('QUEUE')!r}: expected a queue number") from None
    for key in ("AREA_SIZE", "BUF_SIZE", "MAX_HELD"):
        if get(key):
            kw[key.lower()] = _size(key, get(key))
    if get("VIEWS"):
        kw["views"] = get("VIEWS")
    try:
        cfg = Config(**kw).validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"aiozcrx drop-in loop settings ({ENV_PREFIX}*): {e}") from None
    base = get("LOOP").lower()
    if base not in ("", "uvloop", "asyncio"):
        raise ValueError(f"{ENV_PREFIX}LOOP={base!r}: expected uvloop or asyncio")
    return cfg, base


def _receiver_kwargs(cfg: Config) -> dict[str, Any]:
    """``cfg`` as create_server's keywords: those it names, the rest in receiver_options."""
    from .server import RECEIVER_KEYWORDS
    options = cfg.receiver_options()
    named = {k: options.pop(k) for k in RECEIVER_KEYWORDS}
    return {**named, "receiver_options": options}


if TYPE_CHECKING:
    _LoopBase = asyncio.AbstractEventLoop
else:
    _LoopBase = object  # the real base comes second in loop_class()


class _ZcrxLoopMixin(_LoopBase):
    """What the drop-in loop adds to its base loop (asyncio's or uvloop's)."""

    _aiozcrx_config: Config
    _aiozcrx_client_rx: Optional["Receiver"] = None
    _aiozcrx_servers: "weakref.WeakSet[ZcrxServer]"

    _aiozcrx_fds: "weakref.WeakValueDictionary[int, Any]"  # fd -> its ZcrxTransport

    # The fds of open ZcrxTransports are theirs, as asyncio's and uvloop's loops
    # keep their transports' fds to themselves: add_reader & co. refuse them with
    # the base loops' RuntimeError. aiozcrx's own calls go past (engines.base.own_io).
    def _aiozcrx_own_io(self) -> asyncio.AbstractEventLoop:
        return super()  # type: ignore[return-value]

    def _aiozcrx_check_fd(self, fd: Any) -> None:
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                return  # the base loop says what is wrong with it
        transport = self._aiozcrx_fds.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        self._aiozcrx_check_fd(fd)
        super().add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._aiozcrx_check_fd(fd)
        return super().remove_reader(fd)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        self._aiozcrx_check_fd(fd)
        super().add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        self._aiozcrx_check_fd(fd)
        return super().remove_writer(fd)

    def aiozcrx_receivers(self) -> list["Receiver"]:
        """The open Receivers of this loop: one per server, one for clients."""
        rxs = [srv.receiver for srv in self._aiozcrx_servers if not srv.receiver._closed]
        if self._aiozcrx_client_rx is not None and not self._aiozcrx_client_rx._closed:
            rxs.append(self._aiozcrx_client_rx)
        return rxs

    async def create_server(self, protocol_factory: ProtocolFactory,  # type: ignore[override]
                            host: Any = None, port: Any = None, *, ssl: Any = None,
                            **kwargs: Any) -> asyncio.AbstractServer:
        """TCP servers (TLS too, with ``ssl=``) get a Receiver of their own; Unix
        sockets go to the base loop."""
        if kwargs.get("family") == socket.AF_UNIX or _is_unix(kwargs.get("sock")):
            return await super().create_server(
                protocol_factory, host, port, ssl=ssl, **kwargs)
        from .server import create_server
        server = await create_server(protocol_factory, host, port, ssl=ssl, **kwargs,
                                     **_receiver_kwargs(self._aiozcrx_config))
        self._aiozcrx_servers.add(server)
        return server

    async def create_connection(self, protocol_factory: ProtocolFactory,  # type: ignore[override]
                                host: Any = None, port: Any = None, *, ssl: Any = None,
                                **kwargs: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """TCP connections (TLS too) attach to the loop's client Receiver; Unix
        sockets go to the base loop."""
        if _is_unix(kwargs.get("sock")):
            return await super().create_connection(
                protocol_factory, host, port, ssl=ssl, **kwargs)
        from .server import create_connection
        return await create_connection(protocol_factory, host, port, ssl=ssl,
                                       receiver=self._client_receiver(), **kwargs)

    async def connect_accepted_socket(self, protocol_factory: ProtocolFactory,  # type: ignore[override]
                                      sock: socket.socket, *, ssl: Any = None,
                                      ssl_handshake_timeout: Optional[float] = None,
                                      ssl_shutdown_timeout: Optional[float] = None,
                                      **kwargs: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """An accepted TCP socket (the server side: with ``ssl=``, this end
        answers the handshake) on the loop's client Receiver."""
        if _is_unix(sock):
            return await super().connect_accepted_socket(
                protocol_factory, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout,
                **kwargs, **({"ssl_shutdown_timeout": ssl_shutdown_timeout}
                             if ssl_shutdown_timeout is not None else {}))
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        from . import tls
        ctx = tls.server_context(ssl)
        tls.check_timeouts(ctx is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
        if ctx is None:
            from .server import settle
            transport, protocol = await self._client_receiver().wrap(sock, protocol_factory)
            await settle(transport)
            return transport, protocol
        return await tls.wrap(self._client_receiver(), sock, protocol_factory, ctx, server_side=True,
                              ssl_handshake_timeout=ssl_handshake_timeout,
                              ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def start_tls(self, transport: asyncio.BaseTransport,
                        protocol: asyncio.BaseProtocol, sslcontext: _ssl.SSLContext, *,
                        server_side: bool = False, server_hostname: Optional[str] = None,
                        ssl_handshake_timeout: Optional[float] = None,
                        ssl_shutdown_timeout: Optional[float] = None) -> asyncio.Transport:
        """ZcrxTransports are upgraded by ``aiozcrx.start_tls``, with asyncio's SSL
        protocol; so are asyncio's own SSL transports on the uvloop base (TLS over
        TLS: uvloop's ``start_tls`` refuses transports that are not uvloop's). Other
        transports go to the base loop, which checks them as it does. The arguments
        are checked in the base loop's order (the context first)."""
        from .tls import check_context, delegate_start_tls, start_tls
        from .transport import ZcrxTransport, uvloop_rules
        check_context(sslcontext)
        ours = isinstance(transport, ZcrxTransport) or (
            uvloop_rules(self) and getattr(transport, "_start_tls_compatible", False))
        upgrade = start_tls if ours else \
            functools.partial(delegate_start_tls, super().start_tls)
        return await upgrade(transport, protocol, sslcontext, server_side=server_side,
                             server_hostname=server_hostname,
                             ssl_handshake_timeout=ssl_handshake_timeout,
                             ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def sendfile(self, transport: asyncio.WriteTransport, file: IO[bytes],
                       offset: int = 0, count: Optional[int] = None, *,
                       fallback: bool = True) -> int:
        """ZcrxTransports: os.sendfile, as the stock loop's native path (on either
        base; uvloop has none of its own), and where the file cannot go that way
        (``asyncio.SendfileNotAvailableError``) the stock loop's fallback through
        write(), or that error with ``fallback=False``."""
        from .transport import ZcrxTransport
        if not isinstance(transport, ZcrxTransport):
            return await super().sendfile(transport, file, offset, count, fallback=fallback)
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        try:
            return await transport._sendfile_native(file, offset, count)
        except asyncio.SendfileNotAvailableError:
            if not fallback:
                raise
        # asyncio's own fallback (a loop method that needs only run_in_executor)
        fallback_path = asyncio.base_events.BaseEventLoop._sendfile_fallback  # type: ignore[attr-defined]
        sent: int = await fallback_path(self, transport, file, offset, count)
        return sent

    def _client_receiver(self) -> "Receiver":
        """One Receiver per loop for client connections (made on first use)."""
        rx = self._aiozcrx_client_rx
        if rx is None or rx._closed:
            from .receiver import Receiver
            cfg = self._aiozcrx_config
            rx = Receiver(**cfg.receiver_options())
            rx.open()
            self._aiozcrx_client_rx = rx
        return rx

    def close(self) -> None:
        rx = self._aiozcrx_client_rx
        if rx is not None and not rx._closed:
            rx.close()
        self._aiozcrx_client_rx = None
        super().close()


def _is_unix(sock: Optional[socket.socket]) -> bool:
    return sock is not None and socket_family(sock) == socket.AF_UNIX


_classes: dict[type[asyncio.AbstractEventLoop], type[asyncio.AbstractEventLoop]] = {}


def loop_class(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    """The drop-in loop class over ``base`` (an event loop class)."""
    cls = _classes.get(base)
    if cls is None:
        cls = type(f"Zcrx{base.__name__}", (_ZcrxLoopMixin, base), {"__module__": __name__})
        _classes[base] = cls
    return cls


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new drop-in loop, configured from the environment (see the module doc)."""
    cfg, base = config_from_env()
    if base in ("", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if base == "uvloop":
                raise ImportError(f"{ENV_PREFIX}LOOP=uvloop but uvloop is not installed "
                                  "(pip install 'aiozcrx[uvloop]')") from None
            base_cls: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
        else:
            base_cls = uvloop.Loop
    else:
        base_cls = asyncio.SelectorEventLoop
    loop = loop_class(base_cls)()
    assert isinstance(loop, _ZcrxLoopMixin)
    loop._aiozcrx_config = cfg
    loop._aiozcrx_servers = weakref.WeakSet()
    loop._aiozcrx_fds = weakref.WeakValueDictionary()
    return loop


def run(main: Coroutine[Any, Any, _T], *, debug: Optional[bool] = None) -> _T:
    """Runs ``main`` on a new drop-in loop, then closes the loop, as
    ``asyncio.run(main, loop_factory=aiozcrx.new_event_loop)`` (3.12+) on every
    Python from 3.10 on: the tasks still pending are cancelled, asynchronous
    generators and the default executor shut down. asyncio's event loop policies
    are not used (they are deprecated in Python 3.14 and go in 3.16): nothing is
    set as the current loop, the running loop is the loop.

        aiozcrx.run(main())
    """
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    # 3.10: asyncio.run without its set_event_loop() calls
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("aiozcrx.run() cannot be called from a running event loop")
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does with the tasks left when ``main`` returns (3.10)."""
    cancel: Callable[[asyncio.AbstractEventLoop], None] = \
        asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]
    cancel(loop)


# The policy class is made on first use: asyncio's policy classes are deprecated in
# Python 3.14 (using one warns) and go in 3.16, and importing aiozcrx must do neither.
if TYPE_CHECKING:
    class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
        """For code that sets a policy instead of passing a loop factory
        (deprecated with asyncio's policies: use ``aiozcrx.run`` or
        ``loop_factory=aiozcrx.new_event_loop``)."""

        def new_event_loop(self) -> asyncio.AbstractEventLoop: ...
else:
    def __getattr__(name: str) -> Any:
        if name != "EventLoopPolicy":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

        class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
            """For code that sets a policy instead of passing a loop factory
            (deprecated with asyncio's policies: use ``aiozcrx.run`` or
            ``loop_factory=aiozcrx.new_event_loop``)."""

            def new_event_loop(self) -> asyncio.AbstractEventLoop:  # noqa: D102
                return new_event_loop()

        EventLoopPolicy.__module__ = __name__
        globals()["EventLoopPolicy"] = EventLoopPolicy
        return EventLoopPolicy
