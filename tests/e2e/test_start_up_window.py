"""Start-up fails closed too: mitmdump opens its port and loads `-s` scripts on the same
event loop, so a client that hammers the port from before it opens must never reach the
`--mode reverse:` target (with its token) in the moment before keymux is loaded."""
import socket
import threading
import time

from .conftest import CLIENT_TOKEN, pool_yaml
from .harness import GatewayProcess
from .test_fail_closed import Trap

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Authorization: Bearer " + CLIENT_TOKEN.encode() + b"\r\n"
           b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def test_requests_sent_while_the_gateway_starts_never_reach_the_reverse_target(
        mock, tmp_path, confdir):
    trap = Trap()
    gw = GatewayProcess(tmp_path, pool_yaml(mock.base_url), confdir=confdir,
                        reverse=f"http://127.0.0.1:{trap.port}")
    answered, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=2) as s:
                    s.sendall(REQUEST)
                    answered.append(s.recv(64).split(b"\r\n")[0])
            except OSError:  # not listening yet
                time.sleep(0.001)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with gw:  # start() returns once the gateway answers
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and len(answered) < 50:
                time.sleep(0.01)
            stop.set()  # before the gateway stops: its shutdown closes connections unanswered
            for t in threads:
                t.join(5)
    finally:
        stop.set()
        trap.sock.close()
    assert answered, "no request was answered at all"
    assert trap.hits == 0, "a request reached the reverse target while keymux was loading"
    # keymux answered every one of them itself: {} has no model
    assert set(answered) <= {b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 503 Service Unavailable"}
