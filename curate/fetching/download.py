"""Download one URL: http(s) with timeouts, retries with back-off, a body cap and a per-host limit;
file: URLs only under a configured root. Every outcome is a `Download` with a reason code, never an exception.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import urllib3

from curate.config import FetchConfig

CHUNK = 64 * 1024
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


@dataclass
class Download:
    reason: str  # "ok" or a fetch reason code
    body: bytes = b""
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None


class _Transient(Exception):
    def __init__(self, reason: str, error: str, http_status: int | None = None) -> None:
        super().__init__(error)
        self.reason = reason
        self.http_status = http_status


class HostLimiter:
    """At most N requests in flight per host within this worker process."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    def __call__(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            if host not in self._sems:
                self._sems[host] = threading.BoundedSemaphore(self._per_host)
            return self._sems[host]


def make_pool(cfg: FetchConfig) -> urllib3.PoolManager:
    """One connection pool per shard task, shared by its download threads (urllib3 pools are thread-safe).

    urllib3 directly rather than requests: requests re-reads proxy settings and ~/.netrc on every call, which
    cost ~40% more CPU per image in bench/fetch.py.
    """
    return urllib3.PoolManager(
        num_pools=64,
        maxsize=cfg.concurrency,
        headers={"User-Agent": cfg.user_agent},
        retries=False,  # our own loop retries, with back-off, only what is worth retrying
    )


def _read_file(url: str, cfg: FetchConfig) -> Download:
    parts = urlsplit(url)
    if not cfg.file_root:
        return Download("url_outside_root", error="file: URLs need fetch.file_root")
    root = Path(cfg.file_root).resolve()
    raw_path = unquote(parts.path)
    # file:images/x.jpg is relative to the root; file:///abs/x.jpg must lie under it.
    path = (root / raw_path).resolve() if not raw_path.startswith("/") else Path(raw_path).resolve()
    if os.path.commonpath([root, path]) != str(root):
        return Download("url_outside_root", error=f"{path} is not under fetch.file_root")
    try:
        size = path.stat().st_size
        if size > cfg.max_bytes:
            return Download("too_large", attempts=1, error=f"{size} bytes > fetch.max_bytes")
        return Download("ok", body=path.read_bytes(), attempts=1)
    except FileNotFoundError:
        return Download("not_found", attempts=1, error="no such file")
    except OSError as err:
        return Download("not_found", attempts=1, error=f"{type(err).__name__}: {err}")


def _get_following_redirects(
    url: str, cfg: FetchConfig, pool: urllib3.PoolManager
) -> tuple[urllib3.BaseHTTPResponse | None, Download | None]:
    timeout = urllib3.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s)
    for _ in range(cfg.max_redirects + 1):
        response = pool.request("GET", url, preload_content=False, redirect=False, timeout=timeout)
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUS or not location:
            return response, None
        response.drain_conn()
        response.release_conn()
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return None, Download("bad_url", http_status=response.status, error="redirect to a non-http URL")
    return None, Download("redirect_loop", error=f"more than {cfg.max_redirects} redirects")


def _http_once(url: str, cfg: FetchConfig, pool: urllib3.PoolManager) -> Download:
    deadline = time.monotonic() + cfg.total_timeout_s
    try:
        response, refused = _get_following_redirects(url, cfg, pool)
        if response is None:
            assert refused is not None
            return refused
        try:
            status = response.status
            if status in RETRY_STATUS or status >= 500:
                raise _Transient("http_server_error", f"HTTP {status}", status)
            if status in (404, 410):
                return Download("not_found", http_status=status, error=f"HTTP {status}")
            if status >= 400:
                return Download("http_client_error", http_status=status, error=f"HTTP {status}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
                return Download("too_large", http_status=status, error=f"Content-Length {declared}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.stream(CHUNK):
                size += len(chunk)
                if size > cfg.max_bytes:
                    return Download("too_large", http_status=status, error=f"body over {cfg.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Transient("timeout", f"body not complete within {cfg.total_timeout_s}s", status)
                chunks.append(chunk)
            return Download("ok", body=b"".join(chunks), http_status=status)
        finally:
            response.release_conn()
    except urllib3.exceptions.LocationParseError as err:
        return Download("bad_url", error=str(err)[:200])
    except urllib3.exceptions.NewConnectionError as err:  # refused, unreachable, DNS: before the timeouts,
        raise _Transient("connection_error", str(err)[:200]) from err  # of which it is a subclass
    except urllib3.exceptions.TimeoutError as err:
        raise _Transient("timeout", type(err).__name__) from err
    except urllib3.exceptions.ProtocolError as err:  # includes IncompleteRead: the body stopped short
        reason = "truncated" if "IncompleteRead" in repr(err) else "connection_error"
        raise _Transient(reason, str(err)[:200]) from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise _Transient("connection_error", f"{type(err).__name__}: {str(err)[:200]}") from err


def download(url: str, cfg: FetchConfig, pool: urllib3.PoolManager, limiter: HostLimiter) -> Download:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return _read_file(url, cfg)
    if scheme not in ("http", "https"):
        return Download("bad_url", error=f"scheme {scheme or '(none)'!r} is not allowed")
    host = urlsplit(url).netloc.lower()
    if not host:
        return Download("bad_url", error="no host")
    last: _Transient | None = None
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            with limiter(host):
                result = _http_once(url, cfg, pool)
        except _Transient as transient:
            last = transient
            continue
        result.attempts = attempt + 1
        return result
    assert last is not None
    return Download(last.reason, http_status=last.http_status, attempts=cfg.retries + 1, error=str(last))
