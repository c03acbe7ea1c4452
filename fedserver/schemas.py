"""Request and response bodies of the HTTP API, as published in its OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: a stable machine-readable `code` and a sentence for people."""

    code: str
    detail: str


class RegisterRequest(BaseModel):
    enroll_key: str = Field(max_length=256)
    name: str = Field(
        default="", max_length=64, description="a label for the operator, e.g. the device model"
    )


class RegisterResponse(BaseModel):
    client_id: int
    token: str = Field(description="keep it: send it as `Authorization: Bearer <token>`; it is shown once")


class BundleFile(BaseModel):
    path: str
    sha256: str
    bytes: int


class BundleListing(BaseModel):
    files: list[BundleFile]


class TaskEntry(BaseModel):
    task_id: str
    module_kind: str
    labels: list[str]
    module_bytes: int
    max_update_bytes: int


class TaskList(BaseModel):
    tasks: list[TaskEntry]


class RoundBody(BaseModel):
    task_id: str
    round: int
    status: str = Field(description="open, aggregating (wait), or finished")
    module_version: int
    local_epochs: int
    lr: float
    batch_size: int
    proximal_mu: float
    deadline_at: float = Field(description="unix time at which the round closes with the updates it has")
    updates: int
    min_clients: int
    rounds_total: int


class UpdateAccepted(BaseModel):
    update_id: int
    task: str
    round: int
    examples: int
    sha256: str
    round_updates: int
    round_closed: bool


class HistoryEntry(BaseModel):
    round: int
    module_version: int
    updates: int
    examples: int
    bytes_received: int
    metrics: dict[str, float]
    opened_at: float
    closed_at: float | None
    committed_at: float | None


class History(BaseModel):
    task_id: str
    rounds: list[HistoryEntry]


class TaskStatus(RoundBody):
    rounds_committed: int
    clients: int
    updates_total: int
    quarantined: int = Field(
        description="updates the fold set aside (lost blob, not finite), kept to inspect"
    )
    bytes_received: int
    module_bytes: int
    accuracy: float | None
    loss: float | None


class Status(BaseModel):
    clients_registered: int
    tasks: list[TaskStatus]
