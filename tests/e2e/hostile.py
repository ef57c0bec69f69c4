"""An upstream that misbehaves at the socket level, one way per path prefix.

``http://127.0.0.1:PORT/<way>/v1`` is a provider's base_url; the mock upstream
(``keypool.demo``) plays a well-behaved provider, this one the faults: resets at every
stage, silence, trickling, endless streams and malformed answers.
"""
from __future__ import annotations

import socket
import socketserver
import threading
import time

SSE_EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":'
             b'[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n')


def _head(status: int, ctype: str, length: int | None = None, extra: str = "") -> bytes:
    framing = (f"content-length: {length}\r\n" if length is not None else "") + "connection: close\r\n"
    return (f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n{framing}{extra}\r\n").encode()


def _json(status: int, body: bytes, extra: str = "") -> bytes:
    return _head(status, "application/json", len(body), extra) + body


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                return
            data += got
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        way = lines[0].split(" ")[1].split("/")[1]
        length = next((int(l.split(":", 1)[1]) for l in lines[1:]
                       if l.lower().startswith("content-length:")), 0)
        while len(rest) < length:
            rest += sock.recv(65536)
        self.server.seen.append(way)
        getattr(self, "way_" + way.replace("-", "_"))(sock)

    def _rst(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    def way_reset_before_headers(self, sock):
        self._rst(sock)

    def way_reset_mid_body(self, sock):
        sock.sendall(_head(200, "application/json", 5000) + b'{"id":"x","choices":[')
        self._rst(sock)

    def way_reset_mid_stream(self, sock):
        sock.sendall(_head(200, "text/event-stream") + SSE_EVENT * 2)
        time.sleep(0.2)
        self._rst(sock)

    def way_no_headers(self, sock):
        self._wait_for_close(sock, 30)

    def way_trickle(self, sock):
        sock.sendall(_head(200, "application/json", 1000))
        for _ in range(1000):
            time.sleep(0.5)
            try:
                sock.sendall(b" ")
            except OSError:
                return

    def way_forever(self, sock):
        sock.sendall(_head(200, "text/event-stream"))
        while True:
            try:
                sock.sendall(SSE_EVENT)
            except OSError:
                self.server.closed.append("forever")
                return
            time.sleep(0.05)

    def way_malformed_json(self, sock):
        sock.sendall(_json(200, b'{"id":"x","choices":[{"message":'))

    def way_malformed_sse(self, sock):
        sock.sendall(_head(200, "text/event-stream") + b"data: {not json\n\nevent: ??\n"
                     b"data: " + b"[" * 5000 + b"\n\ndata: [DONE]\n\n")

    def way_error_200(self, sock):
        sock.sendall(_json(200, b'{"error":{"message":"overloaded","type":"server_error"}}'))

    def way_absurd_retry_after(self, sock):
        sock.sendall(_json(429, b'{"error":{"message":"slow down"}}',
                           f"retry-after: {self.server.retry_after}\r\n"))

    def _wait_for_close(self, sock, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if not sock.recv(1024):
                    return
            except OSError:
                return


class HostileUpstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []
        self.closed: list[str] = []
        self.retry_after = "1e12"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
