"""What the server lets a client download, and the conditional and range headers of those downloads.

Bundle files and module versions are immutable and named by their sha256, which is also their ETag.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from fedyolo.fedserver.errors import ApiError
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.executorch_files import BACKBONE_DATA_FILE
from fedyolo.runtime.manifest import BACKBONE_FILE, MANIFEST_NAME, TOKENIZER_FILE, FileEntry, file_entry

RANGE = re.compile(r"^bytes=(\d{1,18})-(\d{0,18})$")  # 18 digits: any file size, never a huge int


def bundle_files(bundle: Bundle) -> dict[str, FileEntry]:
    """Every file a client may download, by bundle-relative path; nothing else is ever served."""
    manifest = bundle.manifest
    files = {MANIFEST_NAME: file_entry(bundle.root / MANIFEST_NAME), BACKBONE_FILE: manifest.backbone.file}
    if manifest.tokenizer is not None:
        files[TOKENIZER_FILE] = manifest.tokenizer
    if manifest.backbone.executorch_data is not None:  # the frozen backbone for ExecuTorch clients
        files[BACKBONE_DATA_FILE] = manifest.backbone.executorch_data
    for task_id, task in manifest.tasks.items():
        for name, entry in task.files.items():
            files[f"tasks/{task_id}/{name}"] = entry
    return files


def not_modified(request: Request, etag: str) -> bool:
    """`If-None-Match` as RFC 9110 13.1.2 says: `*` matches, and tags compare weakly (`W/"x"` is `"x"`)."""
    tags = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def check_range(request: Request, size: int) -> None:
    """Only one `bytes=start-[end]` range is served; anything else is a JSON 416, not a guess."""
    header = request.headers.get("range")
    if header is None:
        return
    match = RANGE.match(header.strip())
    if match is None or int(match[1]) >= size or (match[2] and int(match[2]) < int(match[1])):
        raise ApiError(
            "bad_range", f"range {header[:40]!r} is not one satisfiable `bytes=start-[end]` of {size} bytes"
        )
