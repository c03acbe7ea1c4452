"""Errors the API answers with: an HTTP status and a stable machine-readable `code`.

A client branches on `code`, never on `detail` (the sentence for people, which may change).
"""

from __future__ import annotations

from fedyolo.runtime.errors import FedyoloError

# code -> HTTP status. The codes are part of the API: add new ones, never rename.
CODES: dict[str, int] = {
    "invalid_request": 422,  # a parameter or JSON body does not match the OpenAPI schema
    "bad_enroll_key": 401,  # registration with a wrong or missing enrollment key
    "enrollment_full": 403,  # the enrollment key registered as many devices as the server allows
    "unauthorized": 401,  # missing, malformed or unknown client token
    "not_found": 404,  # no such route or file
    "unknown_task": 404,  # the task is not in the server's bundle
    "unknown_version": 404,  # no module version with that number (yet)
    "method_not_allowed": 405,
    "stale_round": 409,  # the update is for a round that is not the open one
    "already_submitted": 409,  # this client already has an update in this round
    "idempotency_conflict": 409,  # an idempotency key reused for a different update
    "task_finished": 409,  # every round of the task is done
    "update_quarantined": 409,  # this client's update for the round was set aside by the fold
    "payload_too_large": 413,  # the update is over the byte cap; refused before it is read in full
    "bad_range": 416,  # a Range header the file cannot satisfy
    "invalid_update": 422,  # not safetensors, or names, shapes, dtype or values differ from the manifest
    "bad_examples": 422,  # example count missing or implausible
    "bad_metrics": 422,  # metrics are not a small JSON object of finite numbers
    "internal": 500,
    "request_timeout": 408,  # the request did not arrive whole within the read timeout (slow or stalled)
    "headers_too_large": 431,  # the request line and headers are over the server's cap
    "too_many_attempts": 429,  # too many wrong enrollment keys from this address: wait Retry-After seconds
    "server_busy": 503,  # too many open connections: try again after Retry-After seconds
    "storage_unavailable": 503,  # the server's disk refused the update (full, read-only, failing): retry later
}


class ApiError(Exception):
    """An answer other than success: becomes JSON `{"code": ..., "detail": ...}` with the code's status."""

    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return CODES[self.code]

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


class ServerConfigError(FedyoloError):
    """The server cannot start as configured: the message names the problem and the fix."""
