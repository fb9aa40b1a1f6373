"""A real HTTP server on loopback that misbehaves in the ways image hosts do.

Routes are plain functions of the request handler. The builders below cover well-behaved serving, status codes,
stalls and trickles, redirects, Retry-After, Content-Encoding, repeated headers (X-Robots-Tag), and (`script`)
raw bytes written straight to the socket for responses no HTTP library would produce: bad status lines, HTTP/0.9,
lying lengths, resets.
`torture_routes` lists them all with the outcome the fetch stage must give.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[["Handler", int], None]  # (handler, how many times this path was asked before)


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESET = _Signal("RESET")  # a script step: abort the connection with a TCP RST
CLOSE = _Signal("CLOSE")  # a script step: close the connection cleanly (FIN)
Step = bytes | float | _Signal  # bytes are written and flushed, a float is a pause in seconds


class Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, *_: object) -> None:  # keep test output quiet
        pass

    def send_body(
        self,
        body: bytes,
        content_type: str = "image/jpeg",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def play(self, steps: tuple[Step, ...]) -> None:
        """Write raw bytes, pause, reset or close, in order; the connection is never reused afterwards."""
        self.close_connection = True
        for step in steps:
            if isinstance(step, bytes):
                self.wfile.write(step)
                self.wfile.flush()
            elif step is RESET:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            elif step is CLOSE:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            else:
                assert isinstance(step, float | int)
                time.sleep(step)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            seen = self.server.hits[path]
            self.server.hits[path] += 1
            self.server.times[path].append(time.monotonic())
            self.server.agents[path].append(self.headers.get("User-Agent"))
        route = self.server.routes.get(path)
        if route is None:
            self.send_body(b"not here", "text/plain", 404)
            return
        try:
            route(self, seen)
        except OSError:  # the client gave up (timeout, reset) or the route reset the connection itself
            self.close_connection = True


class KeepAliveHandler(Handler):
    """HTTP/1.1: connections stay open between requests, so a client's keep-alive reuse is exercised."""

    protocol_version = "HTTP/1.1"


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, keep_alive: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), KeepAliveHandler if keep_alive else Handler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)  # time.monotonic() of each request, by path
        self.agents: defaultdict[str, list[str | None]] = defaultdict(list)  # each request's User-Agent, by path
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and timeouts are the point here, not news

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

    def status(self, path: str, code: int, headers: dict[str, str] | None = None, body: bytes = b"error") -> str:
        self.routes[path] = lambda handler, _: handler.send_body(body, "text/plain", code, headers)
        return self.url(path)

    def fail_then_serve(self, path: str, failures: int, body: bytes) -> str:
        def route(handler: Handler, seen: int) -> None:
            if seen < failures:
                handler.send_body(b"busy", "text/plain", 500)
            else:
                handler.send_body(body)

        self.routes[path] = route
        return self.url(path)

    def retry_after(self, path: str, value: str | Callable[[], str], body: bytes, code: int = 429) -> str:
        """`code` with Retry-After (a value, or a function giving one at request time) once, then the body."""

        def route(handler: Handler, seen: int) -> None:
            if seen == 0:
                handler.send_body(
                    b"slow down", "text/plain", code, {"Retry-After": value() if callable(value) else value}
                )
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

    def redirect(self, path: str, target: str, code: int = 302, delay_s: float = 0.0) -> str:
        def route(handler: Handler, _: int) -> None:
            if delay_s:
                time.sleep(delay_s)
            handler.send_response(code)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        self.routes[path] = route
        return self.url(path)

    def redirect_chain(self, path: str, hops: int, final: bytes, delay_s: float) -> str:
        """`hops` redirects, each answered after `delay_s` (under a read timeout, over a total one together)."""
        for hop in range(hops):
            self.redirect(f"{path}.{hop}", f"{path}.{hop + 1}", delay_s=delay_s)
        self.serve(f"{path}.{hops}", final, delay_s=delay_s)
        return self.url(f"{path}.0")

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

    def encoded(self, path: str, body: bytes, encoding: str = "gzip", valid: bool = True) -> str:
        """The body with Content-Encoding (gzip); not valid: the header claims gzip over bytes that are not."""
        wire = gzip.compress(body) if valid else b"\x1f\x8b\x08\x00garbage, not deflate data" + body[:100]
        return self.serve_with_headers(path, wire, {"Content-Encoding": encoding})

    def serve_with_headers(
        self, path: str, body: bytes, headers: dict[str, str], content_type: str = "image/jpeg"
    ) -> str:
        self.routes[path] = lambda handler, _: handler.send_body(body, content_type, 200, headers)
        return self.url(path)

    def serve_header_lines(
        self,
        path: str,
        body: bytes,
        headers: list[tuple[str, str]],
        code: int = 200,
        content_type: str = "image/jpeg",
    ) -> str:
        """`code` with `headers` sent in order, a name as often as it is listed (two X-Robots-Tag lines)."""

        def route(handler: Handler, _: int) -> None:
            handler.send_response(code)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)

        self.routes[path] = route
        return self.url(path)

    def script(self, path: str, *steps: Step) -> str:
        """After reading the request, play `steps` on the raw socket (see `Handler.play`)."""
        self.routes[path] = lambda handler, _: handler.play(steps)
        return self.url(path)

    def drip(self, path: str, body: bytes, every_s: float, framing: str = "length", head: bytes = b"") -> str:
        """The body one byte per `every_s`: framing "length" (Content-Length), "close" (none: ends at close) or
        "chunked" (one-byte chunks). Each pause is under a read timeout; all of them are over a total one."""
        lines = [b"HTTP/1.1 200 OK", b"Content-Type: image/jpeg"]
        if framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
        elif framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        else:
            lines.append(b"Connection: close")
        steps: list[Step] = [b"\r\n".join(lines) + b"\r\n\r\n" + head]
        for byte in body:
            steps += [every_s, b"1\r\n%c\r\n" % byte if framing == "chunked" else bytes([byte])]
        return self.script(path, *steps)

    def slow_headers(self, path: str, body: bytes, every_s: float) -> str:
        """Headers one byte per `every_s`: a read timeout never fires, yet they would take minutes."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"x" * 400 + b"\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        steps: list[Step] = []
        for byte in head:
            steps += [bytes([byte]), every_s]
        return self.script(path, *steps, body)


def sample_jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    """A real photo-like JPEG (gradient plus noise) that passes every image check."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y + seed * 17) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(0, 40, size=base.shape), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.jpg"


def torture_routes(server: FaultServer) -> dict[str, tuple[str, str, str]]:
    """Register every HTTP fault on `server`: id → (url, expected fetch_status, expected fetch_reason).

    The expectations hold with these FetchConfig settings (others at their defaults):
        total_timeout_s=2, read_timeout_s=1.0, retries=1, backoff_s=0.01, max_retry_after_s=3, max_bytes=300000
    (connect_timeout_s, max_redirects=5 and file_root play no part). Drips pause 0.2 s per byte, under the
    read timeout, so only the total deadline ends them; each such route costs about 2 s per attempt, ~4 s with
    the retry, and "retry-after" waits 1 s. Works on a server with or without keep-alive.
    """
    image = sample_jpeg(seed=11)
    big = sample_jpeg(1600, 1200, seed=12)  # noise makes it large, well over max_bytes
    assert len(big) > 300_000
    ok_url = server.serve("/t/ok.jpg", image)
    drip_body = image[:200]
    status_line = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
    length = b"Content-Length: %d\r\n" % len(image)
    cases: dict[str, tuple[str, str, str]] = {
        "ok": (ok_url, "ok", "ok"),
        # Content-Encoding
        "gzip": (server.encoded("/t/gzip.jpg", image), "ok", "ok"),
        "gzip-bad": (server.encoded("/t/gzip-bad.jpg", image, valid=False), "failed", "corrupt"),
        "gzip-bomb": (
            server.encoded("/t/gzip-bomb.jpg", image + b"\x00" * 5_000_000),
            "rejected",
            "too_large",
        ),
        # The total deadline, whatever the server drips
        "drip-length": (server.drip("/t/drip-length.jpg", drip_body, 0.2), "failed", "timeout"),
        "drip-close": (server.drip("/t/drip-close.jpg", drip_body, 0.2, "close"), "failed", "timeout"),
        "drip-chunked": (server.drip("/t/drip-chunked.jpg", drip_body, 0.2, "chunked"), "failed", "timeout"),
        "slow-headers": (server.slow_headers("/t/slow-headers.jpg", image, 0.2), "failed", "timeout"),
        "slow-redirects": (server.redirect_chain("/t/slow-redirect", 5, image, 0.4), "failed", "timeout"),
        "stall": (server.stall("/t/stall.jpg", 3.0), "failed", "timeout"),
        # Lengths
        "length-longer": (
            server.script("/t/length-longer.jpg", status_line + length + b"\r\n" + image[:1000], CLOSE),
            "failed",
            "truncated",
        ),
        "length-shorter": (
            server.script("/t/length-shorter.jpg", status_line + length + b"\r\n" + image + b"trailing junk", CLOSE),
            "ok",
            "ok",
        ),
        "length-twice-same": (
            server.script("/t/length-twice-same.jpg", status_line + length + length + b"\r\n" + image, CLOSE),
            "ok",
            "ok",
        ),
        "length-twice-differ": (
            server.script(
                "/t/length-twice-differ.jpg", status_line + length + b"Content-Length: 10\r\n\r\n" + image, CLOSE
            ),
            "failed",
            "connection_error",
        ),
        "length-not-a-number": (
            server.script("/t/length-nan.jpg", status_line + b"Content-Length: lots\r\n\r\n" + image, CLOSE),
            "ok",
            "ok",
        ),
        "too-large": (server.serve("/t/too-large.jpg", big), "rejected", "too_large"),
        "too-large-chunked": (server.chunked("/t/too-large-chunked.jpg", big), "rejected", "too_large"),
        # Not HTTP
        "huge-header": (
            server.script("/t/huge-header.jpg", status_line + b"X-Big: " + b"x" * 70_000 + b"\r\n\r\n", CLOSE),
            "failed",
            "connection_error",
        ),
        "many-headers": (
            server.script("/t/many-headers.jpg", status_line + b"X-A: b\r\n" * 150 + length + b"\r\n" + image, CLOSE),
            "failed",
            "connection_error",
        ),
        "bad-status-line": (
            server.script("/t/bad-status.jpg", b"HTTP/1.1 OK-ish\r\n\r\n" + image, CLOSE),
            "failed",
            "connection_error",
        ),
        "http09": (server.script("/t/http09.jpg", image, CLOSE), "failed", "connection_error"),
        "bad-chunk-size": (
            server.script(
                "/t/bad-chunk.jpg",
                status_line + b"Transfer-Encoding: chunked\r\n\r\n" + b"zz\r\n" + image[:100] + b"\r\n0\r\n\r\n",
                CLOSE,
            ),
            "failed",
            "truncated",
        ),
        "interim-103": (
            server.script(
                "/t/interim.jpg",
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + status_line + length + b"\r\n" + image,
                CLOSE,
            ),
            "ok",
            "ok",
        ),
        # Connections
        "reset-before-headers": (server.script("/t/reset-early.jpg", RESET), "failed", "connection_error"),
        "close-at-once": (server.script("/t/close-at-once.jpg", CLOSE), "failed", "connection_error"),
        "reset-mid-body": (
            server.script("/t/reset-mid.jpg", status_line + length + b"\r\n" + image[:1000], 0.05, RESET),
            "failed",
            "connection_error",
        ),
        "refused": (closed_port_url(), "failed", "connection_error"),
        # Statuses
        "missing": (server.status("/t/missing.jpg", 404), "failed", "not_found"),
        "gone": (server.status("/t/gone.jpg", 410), "failed", "not_found"),
        "unauthorized": (server.status("/t/401.jpg", 401), "failed", "http_client_error"),
        "forbidden": (server.status("/t/403.jpg", 403), "failed", "http_client_error"),
        "legal": (server.status("/t/451.jpg", 451), "failed", "http_client_error"),
        "always-500": (server.status("/t/500.jpg", 500), "failed", "http_server_error"),
        "no-content": (server.status("/t/204.jpg", 204, body=b""), "failed", "not_an_image"),
        "not-modified": (server.status("/t/304.jpg", 304, body=b""), "failed", "http_client_error"),
        "empty-200": (server.serve("/t/empty.jpg", b""), "failed", "not_an_image"),
        "retry-after": (server.retry_after("/t/retry-after.jpg", "1", image), "ok", "ok"),
        "retry-after-date": (
            server.retry_after("/t/retry-after-date.jpg", lambda: formatdate(time.time() + 1, usegmt=True), image, 503),
            "ok",
            "ok",
        ),
        "retry-after-too-long": (
            server.retry_after("/t/retry-after-long.jpg", "120", image),
            "failed",
            "http_server_error",
        ),
        # Redirects
        "redirect-relative": (server.redirect("/t/rel.jpg", "ok.jpg"), "ok", "ok"),
        "redirect-absolute-path": (server.redirect("/t/abs.jpg", "/t/ok.jpg", 301), "ok", "ok"),
        "redirect-loop": (server.redirect("/t/loop-a.jpg", "/t/loop-b.jpg"), "failed", "redirect_loop"),
        "redirect-no-location": (
            server.script("/t/no-location.jpg", b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n", CLOSE),
            "failed",
            "http_client_error",
        ),
        "redirect-bad-ipv6": (server.redirect("/t/to-ipv6.jpg", "http://[::1"), "failed", "bad_url"),
        "redirect-file": (server.redirect("/t/to-file.jpg", "file:///etc/passwd"), "failed", "bad_url"),
        "redirect-ftp": (server.redirect("/t/to-ftp.jpg", "ftp://127.0.0.1/x.jpg"), "failed", "bad_url"),
        "redirect-javascript": (server.redirect("/t/to-js.jpg", "javascript:alert(1)"), "failed", "bad_url"),
        "redirect-data": (server.redirect("/t/to-data.jpg", "data:image/jpeg;base64,AAAA"), "failed", "bad_url"),
    }
    server.redirect("/t/loop-b.jpg", "/t/loop-a.jpg")
    return cases


@contextmanager
def fault_server(keep_alive: bool = False) -> Iterator[FaultServer]:
    server = FaultServer(keep_alive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
