"""A real HTTP server on loopback that misbehaves in the ways image hosts do."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[["Handler", int], None]  # (handler, how many times this path was asked before)


class Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, *_: object) -> None:  # keep test output quiet
        pass

    def send_body(self, body: bytes, content_type: str = "image/jpeg", status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            seen = self.server.hits[path]
            self.server.hits[path] += 1
        route = self.server.routes.get(path)
        if route is None:
            self.send_body(b"not here", "text/plain", 404)
            return
        try:
            route(self, seen)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    # Route builders -----------------------------------------------------------------------------------
    def serve(self, path: str, body: bytes, content_type: str = "image/jpeg", delay_s: float = 0.0) -> str:
        def route(handler: Handler, _: int) -> None:
            if delay_s:
                time.sleep(delay_s)
            handler.send_body(body, content_type)

        self.routes[path] = route
        return self.url(path)

    def status(self, path: str, code: int) -> str:
        self.routes[path] = lambda handler, _: handler.send_body(b"error", "text/plain", code)
        return self.url(path)

    def fail_then_serve(self, path: str, failures: int, body: bytes) -> str:
        def route(handler: Handler, seen: int) -> None:
            if seen < failures:
                handler.send_body(b"busy", "text/plain", 500)
            else:
                handler.send_body(body)

        self.routes[path] = route
        return self.url(path)

    def stall(self, path: str, seconds: float) -> str:
        def route(handler: Handler, _: int) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            handler.wfile.write(b"\xff\xd8\xff")
            handler.wfile.flush()
            time.sleep(seconds)

        self.routes[path] = route
        return self.url(path)

    def truncated(self, path: str, body: bytes) -> str:
        def route(handler: Handler, _: int) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True

        self.routes[path] = route
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        def route(handler: Handler, _: int) -> None:
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        self.routes[path] = route
        return self.url(path)

    def chunked(self, path: str, body: bytes) -> str:
        """No Content-Length: the size cap must be enforced while reading."""

        def route(handler: Handler, _: int) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")

        self.routes[path] = route
        return self.url(path)


@contextmanager
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
