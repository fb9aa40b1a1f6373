"""Download one URL: http(s) with timeouts, retries with back-off, a body cap and a per-host limit;
file: URLs only under a configured root. Every input, whatever it is and whatever the server does, ends as a
`Download` whose reason is in `curate.schema.REASONS["fetch"]`; `download` never raises.

How faults map to reasons:
- bad_url: not text, empty, over MAX_URL_CHARS, whitespace or control characters, unparseable (an unclosed IPv6
  bracket, a port out of range), no host or a host that is neither an ASCII DNS name nor an IP literal (IDNs
  are not converted), a scheme other than http(s)/file; a redirect to any of those, or to anything but http(s).
  A redirect never reads local files, whatever fetch.file_root says.
- timeout: no connection within connect_timeout_s, no byte within read_timeout_s, or the attempt (every
  redirect, the headers and the body) not done within total_timeout_s. A watchdog thread shuts the socket at
  the deadline, so a server that drips bytes (into the headers, a Content-Length body, a chunked body or a
  body that ends at close) cannot hold an attempt longer. Not bounded: the DNS look-up (getaddrinfo).
- connection_error: refused, reset (before or in the body), closed before a response, or not HTTP: a bad status
  line, an HTTP/0.9 reply, a header line over 64 KiB or over 100 headers, Content-Lengths that disagree.
- truncated: the body ended before its Content-Length, before its last chunk, or at a chunk size that is no
  number (http.client cannot tell a damaged chunk header from a stream cut inside one).
- corrupt: a Content-Encoding (gzip/deflate) the body does not decode under. Decided here rather than
  connection_error because it is damage in the bytes as served, like a broken JPEG: a retry gets the same.
  A valid encoding is decoded, and max_bytes caps the decoded size (a gzip bomb is too_large).
- http_server_error: 5xx and 408, 425, 429, retried. 429/503 wait for their Retry-After (seconds or an
  HTTP-date) when it is at most max_retry_after_s; a longer one gives up at once and says so.
- not_found: 404, 410. http_client_error: the other 4xx (401, 403, 451, ...), a 3xx that cannot be followed
  (no Location, 300, 304) and a 101 (interim 1xx responses such as 103 Early Hints are skipped).
- redirect_loop: a redirect back to a URL already visited in this attempt, or more than max_redirects.
- opt_out: a 2xx final response (after redirects) whose X-Robots-Tag headers opt out of AI training, with
  fetch.honour_opt_out: a directive of fetch.opt_out_directives (noai, noimageai by default; `none` counts as
  noindex and nofollow) unprefixed or in a group for `*` or for our product token (fetch.user_agent up to its
  first '/' or space), case-insensitive. Decided from the headers: the body is never read and nothing is
  retried; the error text is the header lines that opt out, as served (made printable, at most 200 characters).
  A non-2xx response keeps its own reason whatever its X-Robots-Tag says.
- too_large: a Content-Length or a (decoded) body over max_bytes.
- ok: any 2xx with its body as served (decoded), up to Content-Length when the server sends more; the body may
  be empty (204, an empty 200), which the image check then calls not_an_image.
- internal_error: anything else raised while handling the URL (a bug here or below), with
  `curate.faults.describe` of it as the error text: one URL never ends the shard.
"""

from __future__ import annotations

import heapq
import http.client
import ipaddress
import itertools
import os
import random
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import urllib3
import urllib3.connection
from urllib3.exceptions import (
    DecodeError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from curate.config import FetchConfig
from curate.faults import INTERNAL_ERROR, describe
from curate.schema import OK

# A body is read in pieces of at most this size; read1 returns as soon as any bytes are there, so a trickle is
# seen piece by piece (the deadline is checked after every piece, and the watchdog covers a read that blocks).
CHUNK = 64 * 1024
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUS = frozenset({429, 503})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
# A redirect's own body is read to keep the connection only when it is declared this small; else it is closed.
REDIRECT_BODY_MAX = 64 * 1024
# Image URLs are well under this; a longer "URL" is a data blob or a parsing accident upstream.
MAX_URL_CHARS = 16_384

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\s]")  # also Unicode spaces: a URL with a raw space is a broken URL
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?\Z", re.IGNORECASE)  # '_' occurs in real CDN names
_DELTA_SECONDS = re.compile(r"\d{1,9}(\.\d*)?\Z")
# X-Robots-Tag: a user-agent token before a ':' starts a group of directives for that agent only (RFC 9110 tchar;
# a date's "15:00" has a space before it, so a piece of unavailable_after's date is never taken for one).
_AGENT_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
# The directives that carry a value after their own ':', which is no user-agent group.
_VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
_SHORTHANDS = {"none": ("noindex", "nofollow")}  # Google: none = noindex, nofollow
_OPT_OUT_ERROR_CHARS = 200
_jitter = random.Random()  # back-off jitter only; no output depends on it


@dataclass
class Download:
    reason: str  # "ok" or a fetch reason code
    body: bytes = b""
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None
    # The URL the final response came from, after redirects (None when no response came).
    final_url: str | None = None


class _Transient(Exception):
    """A failure worth another attempt (within this call), carrying what the next attempt should wait for."""

    def __init__(
        self, reason: str, error: str, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(error)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after


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


# The deadline watchdog -------------------------------------------------------------------------------------
# Socket timeouts bound each recv, not a whole response: a server sending one byte per read_timeout_s holds a
# blocking read forever. So every attempt registers its deadline, and a single thread shuts the attempt's
# socket down when the deadline passes; the blocked read then returns at once and the attempt ends as timeout.


class _Attempt:
    """One attempt's deadline and the connection it is using right now."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.final_url: str | None = None
        self._done = False
        self._conn: Any = None
        self._lock = threading.Lock()

    def watch(self, conn: Any) -> None:
        """Make `conn` the one to shut at the deadline (called whenever the attempt starts to use one)."""
        if conn is None:
            return
        with self._lock:
            if self._done:
                return
            self._conn = conn
            conn.curate_attempt = self  # the owner mark: a pooled connection taken by another attempt is not ours
            if self.expired:  # it expired while this connection was being set up
                _shut(conn)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._conn is not None and getattr(self._conn, "curate_attempt", None) is self:
                _shut(self._conn)

    def release(self, conn: Any) -> None:
        """`conn` goes back to the pool while the attempt goes on (a redirect): it is no longer this attempt's to
        shut, or the deadline could cut another attempt's download that took it from the pool."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
            if conn is not None and getattr(conn, "curate_attempt", None) is self:
                conn.curate_attempt = None

    def finish(self) -> None:
        """Called before the connection goes back to the pool: from here on the watchdog leaves it alone."""
        with self._lock:
            self._done = True
            self._conn = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if not isinstance(sock, socket.socket):
        return
    try:
        # socket.socket's own shutdown, not SSLSocket's: that one also drops the TLS state under the reading
        # thread's feet. On the file descriptor it wakes any blocked recv with end-of-file.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to wake


class _Watchdog:
    def __init__(self) -> None:
        self._pid = -1
        self._start_lock = threading.Lock()
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Attempt]] = []
        self._seq = itertools.count()

    def add(self, attempt: _Attempt) -> None:
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():  # two threads may both have seen it missing
                    self._start()
        with self._cond:
            heapq.heappush(self._heap, (attempt.deadline, next(self._seq), attempt))
            if self._heap[0][2] is attempt:
                self._cond.notify()

    def _start(self) -> None:
        # Lazily, and again in a forked child (which inherits the object but not the thread).
        self._cond = threading.Condition()
        self._heap = []
        self._pid = os.getpid()  # last: a thread that sees this pid finds the new heap and condition in place
        threading.Thread(target=self._run, args=(self._cond,), name="curate-fetch-watchdog", daemon=True).start()

    def _run(self, cond: threading.Condition) -> None:
        while True:
            with cond:
                while True:
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    if delay is not None and delay <= 0:
                        break
                    cond.wait(delay)
                # Finished attempts stay queued until their deadline (cheap) rather than being searched for.
                _, _, attempt = heapq.heappop(self._heap)
            try:
                attempt.expire()
            except Exception:  # noqa: BLE001 - a dead watchdog would silently stop every later deadline
                continue


_WATCHDOG = _Watchdog()
_current = threading.local()  # the attempt the calling thread is on, for the connections it opens and uses


def _current_attempt() -> _Attempt | None:
    return getattr(_current, "attempt", None)


class _InterimSkippingResponse(http.client.HTTPResponse):
    """http.client skips only 100 Continue; a 102/103 would otherwise be taken for the final response."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 102 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # an interim response's headers; the final response follows


class _Watched:
    """Mixed into urllib3's connection classes: each tells the attempt on this thread which socket to shut at its
    deadline, as it connects and as a reused keep-alive connection is asked for its response."""

    def connect(self) -> None:
        attempt = _current_attempt()
        if attempt:
            attempt.watch(self)
        super().connect()  # type: ignore[misc]
        if attempt:
            attempt.watch(self)  # shuts the new socket now if the deadline passed while connecting

    def getresponse(self) -> urllib3.response.HTTPResponse:
        attempt = _current_attempt()
        if attempt:
            attempt.watch(self)  # a reused keep-alive connection: connect() is not called again
        return super().getresponse()  # type: ignore[misc, no-any-return]


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):  # type: ignore[misc]
    response_class = _InterimSkippingResponse


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):  # type: ignore[misc]
    response_class = _InterimSkippingResponse


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def make_pool(cfg: FetchConfig) -> urllib3.PoolManager:
    """One connection pool per shard task, shared by its download threads (urllib3 pools are thread-safe).

    urllib3 directly rather than requests: requests re-reads proxy settings and ~/.netrc on every call, which
    cost ~40% more CPU per image in bench/fetch.py. Its connections report to the deadline watchdog, which
    then covers the headers too; with a plain PoolManager only the body is covered.
    """
    pool = urllib3.PoolManager(
        num_pools=64,
        maxsize=cfg.concurrency,
        headers={"User-Agent": cfg.user_agent},
        retries=False,  # our own loop retries, with back-off, only what is worth retrying
    )
    pool.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}  # this pool's only
    return pool


# URLs -------------------------------------------------------------------------------------------------------


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why `url` cannot be fetched, or None. Checked before urllib3 sees it, whose own errors are less clear."""
    if not url:
        return "empty URL"
    if len(url) > MAX_URL_CHARS:
        return f"URL of {len(url)} characters (more than {MAX_URL_CHARS})"
    bad = _BAD_CHARS.search(url)
    if bad:
        return f"URL contains {bad.group()!r} at {bad.start()} (whitespace and control characters must be %-encoded)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as err:
        return f"unparseable URL: {err}"
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        return f"scheme {scheme or '(none)'!r} is not allowed here"
    if scheme == "file":
        return None
    host = parts.hostname
    if not host:
        return "no host"
    if "[" in parts.netloc:
        try:
            if ipaddress.ip_address(host.split("%", 1)[0]).version != 6:
                return f"[{host}] is not an IPv6 address"
        except ValueError:
            return f"[{host}] is not an IPv6 address"
    elif not _HOST_NAME.match(host):
        return f"host {host!r} is not an ASCII host name"
    if port == 0:
        return "port 0"
    try:
        seen = urllib3.util.parse_url(url)
    except LocationValueError as err:
        return f"unparseable URL: {err}"
    # Both parsers must agree on where the request goes, or what we checked is not what urllib3 would fetch.
    if (seen.host or "").strip("[]").lower() != host.lower() or seen.port != port:
        return f"ambiguous URL: read as host {host!r} port {port} and as host {seen.host!r} port {seen.port}"
    return None


def _read_file(url: str, cfg: FetchConfig) -> Download:
    parts = urlsplit(url)
    if not cfg.file_root:
        return Download("url_outside_root", error="file: URLs need fetch.file_root")
    root = Path(cfg.file_root).resolve()
    # %XX are the path's raw bytes (a folder source quotes non-UTF-8 names byte for byte): decode them the way the
    # filesystem does, so such a file is found again.
    raw_path = os.fsdecode(unquote_to_bytes(parts.path))
    if "\x00" in raw_path:
        return Download("bad_url", error="NUL in the file path")
    # file:images/x.jpg is relative to the root; file:///abs/x.jpg must lie under it.
    path = (root / raw_path).resolve() if not raw_path.startswith("/") else Path(raw_path).resolve()
    if os.path.commonpath([root, path]) != str(root):
        return Download("url_outside_root", error=f"{_printable(path)} is not under fetch.file_root")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a directory, or a FIFO whose read would block forever
            return Download("not_found", attempts=1, error="not a regular file")
        if info.st_size > cfg.max_bytes:
            return Download("too_large", attempts=1, error=f"{info.st_size} bytes > fetch.max_bytes")
        with path.open("rb") as handle:
            body = handle.read(cfg.max_bytes + 1)  # the file may have grown since stat
        if len(body) > cfg.max_bytes:
            return Download("too_large", attempts=1, error=f"over {cfg.max_bytes} bytes")
        return Download(OK, body=body, attempts=1)
    except FileNotFoundError:
        return Download("not_found", attempts=1, error="no such file")
    except OSError as err:
        return Download("not_found", attempts=1, error=f"{type(err).__name__}: {err}")


def _printable(path: Path) -> str:
    """A path for an error column: undecodable bytes as \\xNN (Parquet refuses lone surrogates)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), or None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.match(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent (`curate/0.1 (...)` → `curate`), lower-case: what X-Robots-Tag groups
    name an agent by."""
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower()


def robots_directives(value: str, agent: str) -> set[str]:
    """The directives of one X-Robots-Tag header value that apply to `agent` (a lower-case product token),
    lower-case, with shorthands (`none`) expanded. Unprefixed directives apply to everyone; `bot: a, b` starts a
    group for that agent alone, which runs to the next `token:` (or the end of the value); `*:` is everyone's."""
    applies = True
    found: set[str] = set()
    for piece in value.split(","):
        head, colon, rest = piece.partition(":")
        name = head.strip().lower()
        if colon and name not in _VALUED_DIRECTIVES and _AGENT_TOKEN.match(name):
            applies = name in (agent, "*")
            name = rest.partition(":")[0].strip().lower()  # the group's first directive (may carry a value)
        if applies and name:
            found.add(name)
            found.update(_SHORTHANDS.get(name, ()))
    return found


def _opt_out(response: urllib3.BaseHTTPResponse, cfg: FetchConfig) -> str | None:
    """The error text of a response whose X-Robots-Tag opts out (the header lines that do), or None."""
    if not cfg.honour_opt_out or not cfg.opt_out_directives:
        return None
    wanted = {d.lower() for d in cfg.opt_out_directives}
    agent = product_token(cfg.user_agent)
    values = response.headers.getlist("X-Robots-Tag")  # each header line on its own: a group ends with its line
    hits = [v.strip() for v in values if robots_directives(v, agent) & wanted]
    if not hits:
        return None
    text = "; ".join(f"X-Robots-Tag: {v}" for v in hits)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # a header may hold any byte
    return text[:_OPT_OUT_ERROR_CHARS]


# One attempt ----------------------------------------------------------------------------------------------


def _request(url: str, cfg: FetchConfig, pool: urllib3.PoolManager, attempt: _Attempt) -> urllib3.BaseHTTPResponse:
    remaining = attempt.remaining()
    if remaining <= 0:
        raise _Transient("timeout", f"not complete within fetch.total_timeout_s={cfg.total_timeout_s}s")
    # Socket timeouts never beyond the deadline: a plain pool (no watchdog on the headers) still ends near it.
    timeout = urllib3.Timeout(connect=min(cfg.connect_timeout_s, remaining), read=min(cfg.read_timeout_s, remaining))
    response = pool.request("GET", url, preload_content=False, redirect=False, retries=False, timeout=timeout)
    attempt.watch(response.connection)
    return response


def _discard(response: urllib3.BaseHTTPResponse, attempt: _Attempt) -> None:
    """Done with a response we do not read (a redirect): keep its connection only when that is cheap."""
    declared = getattr(response, "length_remaining", None)
    if declared is not None and declared <= REDIRECT_BODY_MAX:
        response.drain_conn()  # swallows errors; a broken connection is closed, not pooled
    else:
        response.close()
    attempt.release(response.connection)
    response.release_conn()


def _follow(
    url: str, cfg: FetchConfig, pool: urllib3.PoolManager, attempt: _Attempt
) -> tuple[urllib3.BaseHTTPResponse | None, Download | None]:
    """The final response after redirects, or the Download that says why there is none."""
    seen = {url.split("#", 1)[0]}
    for _ in range(cfg.max_redirects + 1):
        response = _request(url, cfg, pool, attempt)
        status = response.status
        if status not in REDIRECT_STATUS:
            attempt.final_url = url
            return response, None
        location = (response.headers.get("Location") or "").strip()
        _discard(response, attempt)
        if not location:
            return None, Download("http_client_error", http_status=status, error=f"HTTP {status} without Location")
        try:
            target = urljoin(url, location)  # relative and scheme-relative Locations resolve against this URL
        except ValueError as err:
            return None, Download("bad_url", http_status=status, error=f"redirect to {location[:200]!r}: {err}")
        problem = _url_problem(target, ("http", "https"))  # never file: (a redirect must not read local files)
        if problem:
            return None, Download("bad_url", http_status=status, error=f"redirect to {target[:200]!r}: {problem}")
        key = target.split("#", 1)[0]
        if key in seen:
            return None, Download("redirect_loop", http_status=status, error=f"redirect back to {target[:200]}")
        seen.add(key)
        url = target
    return None, Download("redirect_loop", error=f"more than {cfg.max_redirects} redirects")


def _read_body(response: urllib3.BaseHTTPResponse, cfg: FetchConfig, attempt: _Attempt) -> Download:
    status = response.status
    if status in RETRY_STATUS or status >= 500:
        wait = _retry_after(response.headers.get("Retry-After")) if status in RETRY_AFTER_STATUS else None
        raise _Transient("http_server_error", f"HTTP {status}", status, wait)
    if status in (404, 410):
        return Download("not_found", http_status=status, error=f"HTTP {status}")
    if not 200 <= status < 300:  # 4xx, a 3xx left unfollowed (300, 304), 101
        return Download("http_client_error", http_status=status, error=f"HTTP {status}")
    opted_out = _opt_out(response, cfg)
    if opted_out:  # the site's decision, from the headers alone: the body is not read, nothing is retried
        return Download("opt_out", http_status=status, error=opted_out)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cfg.max_bytes:  # the encoded size; a decoded one is capped below
        return Download("too_large", http_status=status, error=f"Content-Length {declared}")
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = response.read1(CHUNK)
        if not piece:
            break
        size += len(piece)
        if size > cfg.max_bytes:
            return Download("too_large", http_status=status, error=f"body over {cfg.max_bytes} bytes")
        if attempt.remaining() < 0:
            raise _Transient("timeout", f"body not complete within {cfg.total_timeout_s}s", status)
        pieces.append(piece)
    if attempt.expired:  # the watchdog's shutdown reads as end-of-body where the body runs until close
        raise _Transient("timeout", f"body not complete within {cfg.total_timeout_s}s", status)
    return Download(OK, body=b"".join(pieces), http_status=status)


def _broken(err: ProtocolError) -> _Transient:
    cause = err.args[1] if len(err.args) > 1 else err.__cause__
    if isinstance(cause, http.client.IncompleteRead):  # urllib3's own IncompleteRead subclasses it
        return _Transient("truncated", str(err)[:200])
    return _Transient("connection_error", str(err)[:200])


def _fetch(url: str, cfg: FetchConfig, pool: urllib3.PoolManager, attempt: _Attempt) -> Download:
    try:
        response, refused = _follow(url, cfg, pool, attempt)
        if response is None:
            assert refused is not None
            return refused
        result: Download | None = None
        try:
            result = _read_body(response, cfg, attempt)
            result.final_url = attempt.final_url
            return result
        finally:
            attempt.finish()  # before the connection can go back to the pool
            if result is None or result.reason != OK:
                response.close()  # unread or broken: reusing it would read this response's rest as the next one
            response.release_conn()
    except LocationValueError as err:
        return Download("bad_url", error=str(err)[:200])
    except http.client.InvalidURL as err:
        return Download("bad_url", error=str(err)[:200])
    except DecodeError as err:
        return Download("corrupt", error=f"Content-Encoding does not decode: {str(err)[:200]}")
    except NewConnectionError as err:  # refused, unreachable, DNS: before the timeouts, of which it is a subclass
        raise _Transient("connection_error", str(err)[:200]) from err
    except (Urllib3Timeout, TimeoutError) as err:
        raise _Transient("timeout", type(err).__name__) from err
    except ProtocolError as err:
        raise _broken(err) from err
    except (HTTPError, http.client.HTTPException, OSError) as err:
        raise _Transient("connection_error", f"{type(err).__name__}: {str(err)[:200]}") from err


def _http_once(url: str, cfg: FetchConfig, pool: urllib3.PoolManager) -> Download:
    attempt = _Attempt(time.monotonic() + cfg.total_timeout_s)
    _WATCHDOG.add(attempt)
    _current.attempt = attempt
    try:
        return _fetch(url, cfg, pool, attempt)
    except Exception as err:
        # Whatever a shut socket made the read raise (end of file, a reset, a bad status line), it was the deadline.
        if attempt.expired:
            raise _Transient("timeout", f"not complete within fetch.total_timeout_s={cfg.total_timeout_s}s") from err
        raise
    finally:
        attempt.finish()
        _current.attempt = None


def _pause(last: _Transient, retry: int, cfg: FetchConfig) -> float:
    """Full jitter (uniform over 0..backoff_s*2^n) spreads retries of many threads; Retry-After is a floor."""
    jittered = _jitter.uniform(0.0, cfg.backoff_s * 2 ** (retry - 1))
    return max(jittered, last.retry_after or 0.0)


def _download(url: object, cfg: FetchConfig, pool: urllib3.PoolManager, limiter: HostLimiter) -> Download:
    if not isinstance(url, str):  # None, NaN, bytes from a malformed list
        return Download("bad_url", error=f"the URL is a {type(url).__name__}, not text")
    problem = _url_problem(url, ("http", "https", "file"))
    if problem:
        return Download("bad_url", error=problem)
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return _read_file(url, cfg)
    host = f"{parts.hostname}:{parts.port or ''}"
    last: _Transient | None = None
    for attempt in range(cfg.retries + 1):
        if last is not None:
            time.sleep(_pause(last, attempt, cfg))
        try:
            with limiter(host):
                result = _http_once(url, cfg, pool)
        except _Transient as transient:
            last = transient
            if transient.retry_after is not None and transient.retry_after > cfg.max_retry_after_s:
                error = (
                    f"{transient}: Retry-After {transient.retry_after:.0f}s is over "
                    f"fetch.max_retry_after_s={cfg.max_retry_after_s:g}, not waiting"
                )
                return Download(transient.reason, http_status=transient.http_status, attempts=attempt + 1, error=error)
            continue
        result.attempts = attempt + 1
        return result
    assert last is not None
    return Download(last.reason, http_status=last.http_status, attempts=cfg.retries + 1, error=str(last))


def download(url: str, cfg: FetchConfig, pool: urllib3.PoolManager, limiter: HostLimiter) -> Download:
    try:
        return _download(url, cfg, pool, limiter)
    except Exception as err:  # noqa: BLE001 - a bug met by one URL must cost that row, not the shard
        return Download(INTERNAL_ERROR, error=describe(err))
