"""Engine "uring": multishot RECV with buffers the kernel picks from a provided
buffer ring (any kernel with DEFER_TASKRUN, 6.1+)."""

from __future__ import annotations

import errno

from .. import _kernel
from ..errors import UringUnavailable
from .advice import area_error, uring_error
from .base import EngineLoop
from .ring import RingEngine


class UringEngine(RingEngine):
    name = "uring"
    BGID = 7
    # Buffers posted to the kernel at a time start at about this many bytes: small
    # enough to stay in a core's L2 cache, so the kernel's copy lands in warm memory.
    # The C side doubles the window whenever the kernel runs out within a round.
    WARM_BYTES = 512 * 1024
    MIN_POSTED = 8

    @classmethod
    def post_window(cls, buf_size: int, nbufs: int) -> int:
        return min(nbufs, max(cls.MIN_POSTED, cls.WARM_BYTES // buf_size))

    def open(self, loop: EngineLoop) -> None:
        cfg = self.config
        self._open_ring()
        assert self.ring is not None
        try:
            if not self.ring.supports_op(_kernel.OP_RECV):
                raise OSError(errno.EOPNOTSUPP, "IORING_OP_RECV not supported")
            try:
                mapping = _kernel.map_area(cfg.area_bytes, hugepages=cfg.hugepages)
            except OSError as e:
                raise area_error(self.name, cfg, e, UringUnavailable) from None
            try:
                self.area = _kernel.new_area(mapping, cfg.buf_size)
            except BaseException:
                _kernel.unmap(mapping)  # not the Area's yet
                raise
            _kernel.register_pbuf_ring(self.ring, self.area, bgid=self.BGID,
                                     window=self.post_window(cfg.buf_size, self.area.nbufs))
        except UringUnavailable:
            self._abandon_open()
            raise
        except OSError as e:
            self._abandon_open()
            e.__traceback__ = None  # its frames hold the Area (see ZcrxEngine._try_register)
            raise uring_error(self.name, e) from None
        except BaseException:
            self._abandon_open()  # whatever it was: nothing of this engine stays
            raise
        self._start_loop(loop)

    def _prep_recv(self, fd: int, ud: int, limit: int) -> None:
        assert self.ring is not None
        self.ring.prep_recv_pbuf(fd, self.BGID, ud)
