"""A small threaded HTTP/1.1 file server for the fetch benchmark.

    python bench/imageserver.py FOLDER [DELAY_MS]

Serves the files directly inside FOLDER on 127.0.0.1 at a free port and prints that port as its first line of
stdout. With DELAY_MS it waits that long before each answer, like a distant host (bench/overlap.py); a thread per
connection, so the waits of parallel requests overlap. It runs as its own process so that its CPU use never shares
a GIL with the tool being measured.

Why not `python -m http.server`: by default that one speaks HTTP/1.0 (a new connection per image, whatever the client
asks for), logs every request to stderr, and listens with a backlog of 5, so a burst of 64 simultaneous
connects can drop SYNs and stall a client for a second on the retransmit. Real image hosts keep connections
alive and accept bursts; this server does both, so each client gets whatever its own connection handling earns.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


class BenchServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen() backlog: absorb connect bursts from many client threads

    def __init__(self, root: Path, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.root = root
        self.delay_s = delay_s


class ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive when the client wants it; Content-Length is always sent
    server: BenchServer

    def do_GET(self) -> None:
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        # Only plain names inside the folder: no sub-paths, so nothing outside it can be asked for.
        name = unquote(urlsplit(self.path).path).lstrip("/")
        path = self.server.root / name
        if not name or "/" in name or not path.is_file():
            self._reply(404, b"not found", "text/plain")
            return
        self._reply(200, path.read_bytes(), CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # thousands of requests; a line each would only cost CPU


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or not Path(argv[0]).is_dir():
        print("usage: imageserver.py FOLDER [DELAY_MS]", file=sys.stderr)
        return 2
    server = BenchServer(Path(argv[0]).resolve(), float(argv[1]) / 1000 if len(argv) == 2 else 0.0)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
