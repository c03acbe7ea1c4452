"""HTTP to the federation server: retries with exponential backoff, JSON errors, resumable downloads.

Plain httpx: a phone or a Jetson runs it without torch or fastapi.
"""

from __future__ import annotations

import logging
import os
import random
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

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK = 1 << 20


class FederationError(FedyoloError):
    """The server refused a request: `code` is the server's stable error code."""

    def __init__(self, code: str, detail: str, status: int = 0) -> None:
        super().__init__(f"{detail} [{code}]")
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: `base_s * 2**attempt`, at most `max_s`, `attempts` tries in all."""

    attempts: int = 8
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.base_s * 2.0**attempt) * random.uniform(0.5, 1.0))


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
            try:
                response = self.http.request(method, path, headers=self._headers(headers), **kw)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                problem = f"HTTP {response.status_code}"
            if attempt + 1 < self.retry.attempts:
                wait = self.retry.delay(attempt)
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

    def download(
        self, path: str, dest: Path, entry: FileEntry, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Fetch a file into `dest`, resuming a `.part` left by an earlier try, then check its sha256."""
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
            log.warning("%s failed its sha256 check; downloading it again", path)
            part.unlink()
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
            mode = "ab" if response.status_code == 206 else "wb"  # 200: the server sent the whole file
            with open(part, mode) as f:
                for chunk in response.iter_bytes(CHUNK):
                    f.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                f.flush()
                os.fsync(f.fileno())
