"""A stand-in for Flickr's REST endpoint: a real HTTP server on loopback that the real `flickrapi` client talks to.

It speaks what flickrapi actually sends: a form-encoded POST to /services/rest/ with the call's parameters in the
body and OAuth 1.0a (HMAC-SHA1) in the `Authorization` header, the consumer key being the API key. It checks the
signature against the secret it was given, so a request signed with the wrong secret (or unsigned) is refused the
way Flickr refuses it. For `flickr.photos.search` it filters its catalogue by the requested licence ids, pages it,
and returns only the extras that were asked for. For `flickr.people.getPublicPhotos` it lists one owner's public
photos (a catalogue entry with "ispublic": 0 is private and not listed), paged the same way; an owner who has no
entry in the catalogue (nor in `known_users`) is "User not found" (code 1). It records every request, and can be
told to fail a search page (`fail_page`) or one owner's page (`fail_owner_page`) once or a few times, or every call
(`always`), with a Flickr error or an HTTP status.

The catalogue may be replaced while the server runs (`standin.catalogue = new_list`, or `replace_catalogue`); each
request reads the catalogue current when it arrives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

REST_PATH = "/services/rest/"
SEARCH = "flickr.photos.search"
PUBLIC_PHOTOS = "flickr.people.getPublicPhotos"
METHODS = (SEARCH, PUBLIC_PHOTOS)
BASE_FIELDS = ("id", "owner", "secret", "server", "farm", "title", "ispublic", "isfriend", "isfamily")
# extras name -> the photo fields Flickr adds for it
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "license": ("license",),
    "owner_name": ("ownername",),
    "date_taken": ("datetaken", "datetakengranularity", "datetakenunknown"),
    "geo": ("latitude", "longitude", "accuracy", "context"),
    **{
        f"url_{s}": (f"url_{s}", f"height_{s}", f"width_{s}")
        for s in ("sq", "t", "s", "q", "m", "n", "z", "c", "l", "o")
    },
}


@dataclass(frozen=True)
class Fail:
    """A scripted failure: a Flickr `stat=fail` JSON reply, or (with http_status) a bare HTTP error."""

    code: int = 105
    message: str = "Service currently unavailable"
    http_status: int = 200


# Flickr answers rate limiting with a bare HTTP 429 (flickrapi raises "do_request: Status code 429 received").
RATE_LIMITED = Fail(code=429, message="Too Many Requests", http_status=429)
USER_NOT_FOUND = Fail(1, "User not found")


@dataclass
class Request:
    http_method: str
    path: str
    form: dict[str, str]
    oauth: dict[str, str]  # the Authorization header's oauth_* parameters
    signature_ok: bool
    reply: str = ""  # "ok", "fail <code>", "http <status>"

    @property
    def api_key(self) -> str | None:
        return self.form.get("api_key") or self.form.get("oauth_consumer_key") or self.oauth.get("oauth_consumer_key")


@dataclass
class FlickrStandIn:
    api_key: str
    api_secret: str
    catalogue: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    # search page -> failures to answer with, one per request, before the page is served normally
    scripted: dict[int, list[Fail]] = field(default_factory=dict)
    # (user_id, page) -> the same, for flickr.people.getPublicPhotos
    scripted_owner: dict[tuple[str, int], list[Fail]] = field(default_factory=dict)
    # users that exist even with no photo in the catalogue (getPublicPhotos answers them with no photos)
    known_users: set[str] = field(default_factory=set)
    always: Fail | None = None
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{REST_PATH}"

    def fail_page(self, page: int, *failures: Fail) -> None:
        """Answer the next len(failures) searches for `page` with these failures, in order (search only)."""
        with self.lock:
            self.scripted.setdefault(page, []).extend(failures)

    def fail_owner_page(self, user_id: str, page: int, *failures: Fail) -> None:
        """Answer the next len(failures) getPublicPhotos calls for (user_id, page) with these failures, in order."""
        with self.lock:
            self.scripted_owner.setdefault((user_id, page), []).extend(failures)

    def replace_catalogue(self, catalogue: list[dict[str, Any]]) -> None:
        with self.lock:
            self.catalogue = list(catalogue)

    @property
    def searches(self) -> list[Request]:
        return [r for r in self.requests if r.form.get("method") == SEARCH]

    def pages_asked(self) -> list[int]:
        return [int(r.form.get("page", "1")) for r in self.searches]

    @property
    def people_calls(self) -> list[Request]:
        return [r for r in self.requests if r.form.get("method") == PUBLIC_PHOTOS]

    def calls_per_owner(self) -> dict[str, int]:
        """user_id -> how many getPublicPhotos requests asked for it (failed ones too)."""
        return dict(Counter(r.form.get("user_id", "") for r in self.people_calls))

    def ok_calls_per_owner(self) -> dict[str, int]:
        """user_id -> how many getPublicPhotos requests for it were answered stat=ok."""
        return dict(Counter(r.form.get("user_id", "") for r in self.people_calls if r.reply == "ok"))

    def owner_pages_asked(self, user_id: str) -> list[int]:
        return [int(r.form.get("page") or 1) for r in self.people_calls if r.form.get("user_id") == user_id]

    def matching(
        self, license_ids: set[str] | None, catalogue: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        photos = self.catalogue if catalogue is None else catalogue
        return [p for p in photos if license_ids is None or str(p["license"]) in license_ids]

    def public_photos_of(
        self, user_id: str, catalogue: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]] | None:
        """The owner's public photos in catalogue order; None when there is no such user."""
        photos = self.catalogue if catalogue is None else catalogue
        mine = [p for p in photos if str(p.get("owner")) == user_id]
        if not mine and user_id not in self.known_users:
            return None
        return [p for p in mine if str(p.get("ispublic", 1)) != "0"]

    # ---------------------------------------------------------------------------------------------------
    def answer(
        self, request: Request, host: str, body: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for one request; records it."""
        request.signature_ok = self._signature_ok(host, request, body, headers)
        with self.lock:
            self.requests.append(request)
            form = request.form
            method = form.get("method")
            page = _int(form.get("page"), 1)
            catalogue = self.catalogue  # the catalogue current when the request arrives
            failure = self.always
            if failure is None and method == SEARCH and self.scripted.get(page):
                failure = self.scripted[page].pop(0)
            owner_key = (form.get("user_id", ""), page)
            if failure is None and method == PUBLIC_PHOTOS and self.scripted_owner.get(owner_key):
                failure = self.scripted_owner[owner_key].pop(0)
        if request.path != REST_PATH or request.http_method != "POST":
            request.reply = "http 404"
            return 404, "text/plain", b"not found"
        if failure is not None and failure.http_status != 200:
            request.reply = f"http {failure.http_status}"
            phrase = _phrase(failure.http_status)
            return failure.http_status, "text/html", f"<html><body>{phrase}</body></html>".encode()
        if request.api_key != self.api_key:
            failure = Fail(100, "Invalid API Key (Key not found)")
        elif not request.signature_ok:
            failure = Fail(96, "Invalid signature")
        elif method not in METHODS:
            failure = Fail(112, f'Method "{method}" not found')
        payload: dict[str, Any] | None = None
        if failure is None and method == SEARCH:
            payload = self._search(form, catalogue)
        elif failure is None:
            owned = self.public_photos_of(form.get("user_id", ""), catalogue)
            if owned is None:
                failure = USER_NOT_FOUND
            else:
                payload = self._page(owned, form)
        if failure is not None or payload is None:
            failure = failure or Fail()
            request.reply = f"fail {failure.code}"
            payload = {"stat": "fail", "code": failure.code, "message": failure.message}
        else:
            request.reply = "ok"
        return self._render(form, payload)

    def _render(self, form: dict[str, str], payload: dict[str, Any]) -> tuple[int, str, bytes]:
        text = json.dumps(payload)
        if form.get("format") != "json":  # Flickr answers REST XML; flickrapi's parsed-json could not read it
            stat = payload["stat"]
            return 200, "text/xml", f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="{stat}"></rsp>'.encode()
        if form.get("nojsoncallback") != "1":  # JSONP, as Flickr does without nojsoncallback=1
            return 200, "text/javascript", f"jsonFlickrApi({text})".encode()
        return 200, "application/json", text.encode()

    def _search(self, form: dict[str, str], catalogue: list[dict[str, Any]]) -> dict[str, Any]:
        licences = {x.strip() for x in form["license"].split(",")} if form.get("license") else None
        return self._page(self.matching(licences, catalogue), form)

    def _page(self, photos: list[dict[str, Any]], form: dict[str, str]) -> dict[str, Any]:
        """One page of `photos`, as flickr.photos.search and flickr.people.getPublicPhotos both answer it."""
        per_page = min(max(_int(form.get("per_page"), 100), 1), 500)
        pages = math.ceil(len(photos) / per_page)
        # Like Flickr, a page past the end answers with the last page again.
        page = min(max(_int(form.get("page"), 1), 1), max(pages, 1))
        extras = {x.strip() for x in form.get("extras", "").split(",") if x.strip()}
        keep = set(BASE_FIELDS).union(*(EXTRA_FIELDS.get(x, ()) for x in extras))
        chosen = photos[(page - 1) * per_page : page * per_page]
        return {
            "photos": {
                "page": page,
                "pages": pages,
                "perpage": per_page,
                "total": len(photos),
                "photo": [{k: v for k, v in p.items() if k in keep} for p in chosen],
            },
            "stat": "ok",
        }

    def _signature_ok(self, host: str, request: Request, body: list[tuple[str, str]], headers: dict[str, str]) -> bool:
        given = request.oauth.get("oauth_signature")
        if not given or request.oauth.get("oauth_signature_method") != "HMAC-SHA1":
            return False
        params = oauth_signature.collect_parameters(body=body, headers=headers, exclude_oauth_signature=True)
        base = oauth_signature.signature_base_string(
            request.http_method,
            oauth_signature.base_string_uri(f"http://{host}{request.path}"),
            oauth_signature.normalize_parameters(params),
        )
        token_secret = ""  # store_token=False: no user token, consumer-only signing
        key = f"{oauth_utils.escape(self.api_secret)}&{oauth_utils.escape(token_secret)}"
        expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()
        return hmac.compare_digest(expected, given)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: object) -> None:  # keep test output quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        body = parse_qsl(raw, keep_blank_values=True)
        path, _, query = self.path.partition("?")
        form = dict(parse_qsl(query, keep_blank_values=True))
        form.update(body)
        auth = self.headers.get("Authorization", "")
        oauth = (
            {k: oauth_utils.unescape(v) for k, v in oauth_utils.parse_authorization_header(auth)}
            if auth.startswith("OAuth ")
            else {}
        )
        request = Request(self.command, path, form, oauth, signature_ok=False)
        headers = {"Authorization": auth} if auth else {}
        status, content_type, payload = self.server.standin.answer(request, self.headers.get("Host", ""), body, headers)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_POST = _handle
    do_GET = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: FlickrStandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.standin = standin


@contextmanager
def flickr_standin(api_key: str, api_secret: str, catalogue: list[dict[str, Any]]) -> Iterator[FlickrStandIn]:
    standin = FlickrStandIn(api_key, api_secret, list(catalogue))
    server = _Server(standin)
    standin.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
