"""Uploads for tests/test_workers.py (run as a script, in the peer's network
namespace for the NIC tests): N connections at once, each from its own source
port, each sending an 8-byte length and that many bytes, then reading the
worker's one-line JSON answer. Prints one JSON list: per connection its index,
source port, the sha256 of what it sent and the answer (or the error).

argv[1]: JSON {host, port, conns, size, src_base, pause}. With "pause", every
connection first sends half its bytes, then "half" is printed and the sender
waits for a line on stdin before it sends the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import socket
import struct
import sys

CHUNK = 64 * 1024


def main() -> None:
    p = json.loads(sys.argv[1])
    conns, size = p["conns"], p["size"]
    family = socket.AF_INET6 if ":" in p["host"] else socket.AF_INET
    socks, shas, blocks, sent, replies, errors = [], [], [], [], [b""] * conns, [""] * conns
    for i in range(conns):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if p.get("src_base"):
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", p["src_base"] + i))
        s.connect((p["host"], p["port"]))
        head = struct.pack("!Q", size)
        s.sendall(head)
        socks.append(s)
        blocks.append(os.urandom(CHUNK))
        shas.append(hashlib.sha256())
        sent.append(0)

    def chunk(i: int, at: int) -> bytes:
        # each chunk carries its connection and position: misordered data shows in the hash
        b = struct.pack("!IQ", i, at) + blocks[i][12:]
        return b[:min(CHUNK, size - at)]

    def pump(limit: list[int]) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            if sent[i] < limit[i] and not errors[i]:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_WRITE, i)
        pending: dict[int, memoryview] = {}
        while sel.get_map():
            for key, _ in sel.select(60):
                i = key.data
                if i not in pending:
                    c = chunk(i, sent[i])
                    c = c[:limit[i] - sent[i]]
                    shas[i].update(c)
                    pending[i] = memoryview(c)
                try:
                    n = socks[i].send(pending[i])
                except BlockingIOError:
                    continue
                except OSError as e:
                    errors[i] = f"send: {e}"
                    sel.unregister(socks[i])
                    continue
                sent[i] += n
                pending[i] = pending[i][n:]
                if not len(pending[i]):
                    del pending[i]
                    if sent[i] >= limit[i]:
                        sel.unregister(socks[i])
        sel.close()

    if p.get("pause"):
        pump([size // 2 // CHUNK * CHUNK] * conns)
        print("half", flush=True)
        sys.stdin.readline()
    pump([size] * conns)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        if not errors[i]:
            sel.register(s, selectors.EVENT_READ, i)
    while sel.get_map():
        for key, _ in sel.select(120):
            i = key.data
            try:
                data = socks[i].recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                errors[i] = f"recv: {e}"
                data = b""
            if data:
                replies[i] += data
            else:
                sel.unregister(socks[i])
    out = []
    for i, s in enumerate(socks):
        try:
            answer = json.loads(replies[i]) if replies[i] else None
        except ValueError:
            answer = None
        out.append({"i": i, "src_port": s.getsockname()[1], "sha256": shas[i].hexdigest(),
                    "sent": sent[i], "answer": answer, "error": errors[i] or ("" if answer else "no answer")})
        s.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
