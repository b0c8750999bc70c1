"""A small TCP proxy on 127.0.0.1 between an S3 client and the server, for fault and GET-count
tests: it forwards bytes both ways and can reset connections, add latency, or be "down"
(every connection reset at once); it parses the HTTP requests going through it and keeps a log
of (method, path, Range header) so a test can count the GETs of each object.

Threads only, in the test process; `close()` ends the listener and every open connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent: /BUCKET/KEY?query (path-style addressing)
    range: str | None

    @property
    def key(self) -> str:
        """BUCKET/KEY without the query string."""
        return self.path.split("?", 1)[0].lstrip("/")


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing peer or middlebox would.

    `shutdown(SHUT_RD)` first: the other pump thread is usually blocked in `recv` on this
    socket, and on Linux a `close` from another thread does not end that call, so the socket
    stayed open, nothing was sent and the peer waited for its own timeout (a "reset" was a
    stall of ~8 s). SHUT_RD ends the blocked `recv` and sends nothing; the close then sends
    the RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()


class _RequestParser:
    """Splits the client -> server byte stream into HTTP/1.1 request heads (bodies skipped by
    Content-Length)."""

    def __init__(self, on_request):
        self.buf, self.skip, self.on_request, self.broken = b"", 0, on_request, False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        while True:
            if self.skip:
                n = min(self.skip, len(self.buf))
                self.buf, self.skip = self.buf[n:], self.skip - n
                if self.skip:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            if len(parts) < 2 or "chunked" in headers.get("transfer-encoding", ""):
                self.broken = True  # not parseable further; forwarding goes on
            if len(parts) >= 2:
                self.on_request(Request(parts[0], parts[1], headers.get("range")))
            self.skip = int(headers.get("content-length", "0") or 0)


class TcpProxy:
    """127.0.0.1:port -> upstream. Settings may change at any time from the test."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.latency_s = 0.0          # added before forwarding each server -> client chunk
        self.down = False             # reset every connection, new and open
        self.reset_after_bytes: int | None = None  # reset a connection after this many
        self.resets_left = 0          # ... server -> client bytes, this many times
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- what the tests read -----------------------------------------------------------
    def gets(self, key_prefix: str = "") -> Counter:
        """GET requests per BUCKET/KEY (only keys starting with key_prefix)."""
        with self._lock:
            return Counter(r.key for r in self.requests
                           if r.method == "GET" and r.key.startswith(key_prefix))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                _reset(c)

    def reset_connections(self, times: int, after_bytes: int = 0) -> None:
        """Reset the next `times` connections after `after_bytes` bytes from the server."""
        with self._lock:
            self.resets_left, self.reset_after_bytes = times, after_bytes

    # ---- forwarding --------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take_reset(self) -> int | None:
        with self._lock:
            if self.resets_left > 0:
                self.resets_left -= 1
                return self.reset_after_bytes or 0
        return None

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        for sock in (client, server):   # forward each piece at once, as the peers wrote it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.update((client, server))
        parser = _RequestParser(self._record)
        up = threading.Thread(target=self._pump, args=(client, server, parser.feed, None),
                              daemon=True)
        up.start()
        self._pump(server, client, None, self._take_reset())
        up.join(timeout=5)
        with self._lock:
            self._conns.difference_update((client, server))

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _pump(self, src: socket.socket, dst: socket.socket, observe, reset_after) -> None:
        """Copy src -> dst until either side ends; then both sockets are shut, so a peer
        never waits on a connection whose other half is gone (a server closing an idle
        keep-alive connection is seen by the client at once, as without the proxy)."""
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data or self.down:
                    break
                if observe:
                    observe(data)
                if self.latency_s and not observe:
                    time.sleep(self.latency_s)
                if reset_after is not None and sent + len(data) > reset_after:
                    dst.sendall(data[:max(0, reset_after - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        if self.down or reset_after is not None:
            _reset(dst)
            _reset(src)
            return
        for sock in (dst, src):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _reset(c)
