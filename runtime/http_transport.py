"""HTTP to the federation server: retries with exponential backoff, JSON errors, resumable downloads.

Plain httpx: a phone or a Jetson runs it without torch or fastapi.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import FileEntry, sha256_file

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # 408: the server timed a slow request out
CHUNK = 1 << 20
CONTENT_RANGE = re.compile(r"^bytes (\d{1,18})-(\d{1,18})/(\d{1,18}|\*)$")


class FederationError(FedyoloError):
    """The server refused a request: `code` is the server's stable error code."""

    def __init__(self, code: str, detail: str, status: int = 0) -> None:
        super().__init__(f"{detail} [{code}]")
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: `base_s * 2**attempt`, at most `max_s`, `attempts` tries in all.

    A server's `Retry-After` is honoured up to `retry_after_max_s`: a broken or hostile server cannot park
    the device for an hour, nor make it retry sooner than its own backoff.
    """

    attempts: int = 8
    base_s: float = 0.5
    max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        backoff = float(min(self.max_s, self.base_s * 2.0**attempt) * random.uniform(0.5, 1.0))
        asked = retry_after_seconds(retry_after)
        return backoff if asked is None else max(backoff, min(asked, self.retry_after_max_s))


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now (delay-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and len(value) <= 9:
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None


def error_of(response: httpx.Response) -> FederationError:
    """The server's `{"code", "detail"}` as an exception; any other body becomes code `http_<status>`."""
    try:
        body = response.json()
        return FederationError(str(body["code"]), str(body["detail"]), response.status_code)
    except (ValueError, KeyError, TypeError):
        return FederationError(f"http_{response.status_code}", response.text[:200], response.status_code)


def ssl_context(verify: bool | str | os.PathLike[str]) -> ssl.SSLContext | bool:
    """httpx's `verify`: True (system CAs), False, or a CA/certificate file such as a self-signed server's."""
    if isinstance(verify, bool):
        return verify
    return ssl.create_default_context(cafile=os.fspath(verify))


class Connection:
    """One server: a base URL, an optional bearer token, retries on connection errors and 5xx/429."""

    def __init__(
        self,
        url: str,
        verify: bool | str | os.PathLike[str] = True,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.token: str | None = None
        self.http = httpx.Client(
            base_url=self.url, verify=ssl_context(verify), timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return headers | (extra or {})

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        """Send, retrying what may succeed later; any other answer (2xx or 4xx) is returned as it is."""
        for attempt in range(self.retry.attempts):
            retry_after = None
            try:
                response = self.http.request(method, path, headers=self._headers(headers), **kw)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after")
            if attempt + 1 < self.retry.attempts:
                wait = self.retry.delay(attempt, retry_after)
                log.warning("%s %s failed (%s); retrying in %.1f s", method, path, problem, wait)
                self.sleep(wait)
        raise FederationError(
            "unreachable", f"{method} {self.url}{path} failed {self.retry.attempts} times, last: {problem}"
        )

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """A JSON answer, or FederationError with the server's code."""
        response = self.request(method, path, **kw)
        if response.status_code >= 400:
            raise error_of(response)
        return response.json()

    def get_capped(self, path: str, max_bytes: int) -> httpx.Response:
        """GET an answer held in memory, retried like `request`; refused (FederationError `too_large`) as
        soon as its body is known to exceed `max_bytes`."""
        for attempt in range(self.retry.attempts):
            retry_after = None
            try:
                with self.http.stream("GET", path, headers=self._headers(None)) as response:
                    if response.status_code not in RETRY_STATUS:
                        body = _read_at_most(response, max_bytes, path)
                        return httpx.Response(response.status_code, headers=response.headers, content=body)
                    problem = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("retry-after")
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            if attempt + 1 < self.retry.attempts:
                self.sleep(self.retry.delay(attempt, retry_after))
        raise FederationError(
            "unreachable", f"GET {self.url}{path} failed {self.retry.attempts} times, last: {problem}"
        )

    def download(
        self, path: str, dest: Path, entry: FileEntry, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Fetch a file into `dest`, resuming a `.part` left by an earlier try, then check its sha256.

        Never writes more than the `entry.bytes` the listing declares: a server that sends more is
        refused at once (FederationError `bad_download`) and the partial file is deleted.
        """
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.retry.attempts):
            have = part.stat().st_size if part.exists() else 0
            if have > entry.bytes:
                part.unlink()
                have = 0
            try:
                if have < entry.bytes:
                    self._fetch(path, part, have, entry, on_bytes)
            except httpx.TransportError as e:
                if attempt + 1 == self.retry.attempts:
                    raise FederationError("unreachable", f"downloading {path} failed: {e}") from e
                self.sleep(self.retry.delay(attempt))
                continue
            if sha256_file(part) == entry.sha256:
                os.replace(part, dest)
                return
            part.unlink()
            if attempt + 1 < self.retry.attempts:
                wait = self.retry.delay(attempt)
                log.warning("%s failed its sha256 check; downloading it again in %.1f s", path, wait)
                self.sleep(wait)
        raise FederationError(
            "bad_download", f"{path} kept failing its sha256 check; the server's file changed?"
        )

    def _fetch(
        self, path: str, part: Path, have: int, entry: FileEntry, on_bytes: Callable[[int], None] | None
    ) -> None:
        headers = {"range": f"bytes={have}-", "if-range": f'"{entry.sha256}"'} if have else {}
        with self.http.stream("GET", path, headers=self._headers(headers)) as response:
            if response.status_code in RETRY_STATUS:
                raise httpx.TransportError(f"HTTP {response.status_code}")
            if response.status_code not in (200, 206):
                response.read()
                raise error_of(response)
            start = _resumed_at(response, have, entry.bytes, path)  # 200: the server sent the whole file
            room = entry.bytes - start
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > room:
                part.unlink(missing_ok=True)
                raise _oversize(path, entry.bytes)
            with open(part, "r+b" if start else "wb") as f:
                f.truncate(start)
                f.seek(start)
                for chunk in response.iter_bytes(min(CHUNK, room + 1)):  # read no more than needed to tell
                    room -= len(chunk)
                    if room < 0:  # more than the listing declares: stop before it reaches the disk
                        f.close()
                        part.unlink(missing_ok=True)
                        raise _oversize(path, entry.bytes)
                    f.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                f.flush()
                os.fsync(f.fileno())


def _oversize(path: str, size: int) -> FederationError:
    return FederationError(
        "bad_download",
        f"the server sent more of {path} than the {size} bytes its listing declares; refused and deleted "
        "(a broken or hostile server, or a proxy rewriting answers)",
    )


def _resumed_at(response: httpx.Response, have: int, size: int, path: str) -> int:
    """Where the body of a download answer starts in the file: 0 for a 200, `have` for a matching 206."""
    if response.status_code == 200:
        return 0
    match = CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    if match is None or int(match[1]) != have or int(match[2]) >= size:
        raise FederationError(
            "bad_download",
            f"the server answered a resumed download of {path} from byte {have} with "
            f"Content-Range {response.headers.get('content-range')!r}",
        )
    return have


def _read_at_most(response: httpx.Response, max_bytes: int, path: str) -> bytes:
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FederationError("too_large", f"the server's answer to {path} is over {max_bytes} bytes")
    chunks, total = [], 0
    for chunk in response.iter_bytes(min(CHUNK, max_bytes + 1)):
        total += len(chunk)
        if total > max_bytes:
            raise FederationError("too_large", f"the server's answer to {path} is over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
