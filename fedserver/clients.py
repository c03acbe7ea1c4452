"""Who may join: an enrollment key registers a device once; the device then holds its own token.

The server keeps only the sha256 of a token: a leaked database lets no one act as a client. Tokens
are 256 random bits, so an unsalted hash is as strong as the token.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time

from fedyolo.fedserver.errors import ApiError
from fedyolo.fedserver.store import Store, sha256_hex

TOKEN_PREFIX = "fyc_"


class EnrollmentBackoff:
    """Wrong enrollment keys per client address: after `free` of them, the address must wait before its next
    try, twice as long after each further miss (`base_s` up to `max_s`); meanwhile every try, even with the
    right key, is 429 `too_many_attempts` with Retry-After. A right key clears the address.

    Guessing drops from hundreds of tries a second to a few an hour. Per server process, in memory:
    `max_addresses` bounds it (the oldest entry goes), and a restart forgets.
    """

    def __init__(
        self, free: int = 5, base_s: float = 1.0, max_s: float = 900.0, max_addresses: int = 10_000
    ) -> None:
        self.free, self.base_s, self.max_s, self.max_addresses = free, base_s, max_s, max_addresses
        self.clock = time.monotonic
        self._misses: dict[str, tuple[int, float]] = {}  # address -> (misses, no try before this time)
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """ApiError(too_many_attempts) while `address` must wait."""
        with self._lock:
            _, until = self._misses.get(address, (0, 0.0))
        wait = until - self.clock()
        if wait > 0:
            raise ApiError(
                "too_many_attempts",
                f"too many wrong enrollment keys from {address}; try again in {math.ceil(wait)} s",
                headers={"retry-after": str(math.ceil(wait))},
            )

    def missed(self, address: str) -> None:
        with self._lock:
            misses = self._misses.pop(address, (0, 0.0))[0] + 1
            over = misses - self.free
            wait = min(self.max_s, self.base_s * 2.0**over) if over >= 0 else 0.0
            self._misses[address] = (misses, self.clock() + wait)
            if len(self._misses) > self.max_addresses:
                self._misses.pop(next(iter(self._misses)))

    def cleared(self, address: str) -> None:
        with self._lock:
            self._misses.pop(address, None)


def new_enroll_key() -> str:
    """A fresh enrollment key for `serve` to print when none is given."""
    return "fye_" + secrets.token_urlsafe(24)


class Clients:
    """Registration and token checks; verified token hashes are cached in memory."""

    def __init__(self, store: Store, enroll_key: str, max_clients: int = 10_000) -> None:
        self.store = store
        self.max_clients = max_clients
        self._enroll_key = enroll_key.encode()
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()
        self.backoff = EnrollmentBackoff()

    def register(self, enroll_key: str, name: str, address: str = "") -> tuple[int, str]:
        """(client id, token) for a device that shows the enrollment key; `address` is where it asks from."""
        self.backoff.check(address)
        if not hmac.compare_digest(enroll_key.encode(), self._enroll_key):
            self.backoff.missed(address)
            raise ApiError("bad_enroll_key", "the enrollment key is wrong; ask the server's operator for it")
        self.backoff.cleared(address)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = sha256_hex(token.encode())
        with self.store.transaction() as db:
            (registered,) = db.execute("SELECT COUNT(*) FROM clients").fetchone()
            if registered >= self.max_clients:
                raise ApiError(
                    "enrollment_full",
                    f"this server's enrollment key has registered its {self.max_clients} devices; "
                    "ask the operator (fedyolo serve --max-clients)",
                )
            cursor = db.execute(
                "INSERT INTO clients (token_hash, name, created_at) VALUES (?, ?, ?)",
                (digest, name, time.time()),
            )
            client_id = int(cursor.lastrowid or 0)
        with self._lock:
            self._known[digest] = client_id
        return client_id, token

    def authenticate(self, authorization: str | None) -> int:
        """The client id for an `Authorization: Bearer <token>` header, or ApiError(unauthorized)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            raise ApiError(
                "unauthorized", "send the client token as `Authorization: Bearer fyc_...`; register first"
            )
        digest = sha256_hex(token.strip().encode())
        with self._lock:
            client_id = self._known.get(digest)
        if client_id is not None:
            return client_id
        with self.store.read() as db:
            row = db.execute("SELECT id FROM clients WHERE token_hash = ?", (digest,)).fetchone()
        if row is None:
            raise ApiError("unauthorized", "unknown client token; register again with the enrollment key")
        with self._lock:
            self._known[digest] = row[0]
        return int(row[0])
