"""Uploaded files: stored under their ids, checked with tunekit's own data checks, listed.

A file is written to a temporary name, fsynced and renamed to `files/<id>[.ext]` before its
row is committed, so a SIGKILL leaves either no file or a whole one (an unlisted leftover
is removed at the next start). The extension is kept only when it is one tunekit reads by
(.jsonl, .csv, ...): it is never a path or a name the user chose.

A `fine-tune` upload is read at once the way `tunekit prepare` reads data (formats,
validation: tunekit/data/records.py), twice: as training data (every conversation ends
with an assistant answer) and as held-out items (a question, optionally with its answer or
the facts it must state). Either use is fine for status `processed`; a file good for
neither has status `error` and `status_details` naming the first bad line and its reason.
A job then refuses a file that is bad for the use it is given (jobs.py), naming the line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tunekit.serve import store
from tunekit.serve.errors import ApiError, bad_request, not_found

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "vision", "user_data", "evals")
UPLOAD_PURPOSES = tuple(p for p in PURPOSES if p != "fine-tune-results")
_KEPT_EXTS = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".md"}
_SHOWN_LINES = 5


def file_object(row: dict) -> dict:
    """The OpenAI FileObject for a row (status and status_details are deprecated there, still read)."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": row["status_details"], "expires_at": None}


def _ext(filename: str) -> str:
    ext = Path(filename).suffix.lower()
    return ext if ext in _KEPT_EXTS else ""


def store_upload(root: Path, chunks: Iterable[bytes], filename: str, max_bytes: int) -> tuple[str, Path, int]:
    """Write `chunks` to files/<new id>; (id, path, size). Over `max_bytes`: 413, nothing kept."""
    file_id = store.new_id("file-")
    final = root / "files" / f"{file_id}{_ext(filename)}"
    tmp = final.with_name(f".{final.name}.partial")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return file_id, final, size


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the file is larger than this server's upload limit of {max_bytes / 2**20:g} MB; "
                         "split it, or restart the server with a larger --max-upload-mb",
                    code="file_too_large", param="file", headers={"x-should-retry": "false"})


def check_data(path: Path) -> dict:
    """{"records": n, "train": problem or None, "heldout": problem or None}: what is wrong with the
    file as training data and as held-out items. A problem names the first bad line, its reason
    and detail, how many lines are bad and the first few of them."""
    from tunekit.data.records import Reject, iter_records
    from tunekit.errors import DataError

    out: dict = {"records": 0}
    for use, need_assistant in (("train", True), ("heldout", False)):
        bad: list = []
        count = 0
        try:
            for item in iter_records(path, need_assistant=need_assistant):
                count += 1
                if isinstance(item, Reject):
                    bad.append(item)
        except DataError as e:  # not readable at all: empty, binary, of no format tunekit reads
            out[use] = {"line": None, "reason": "unreadable", "detail": _without_path(str(e), path), "invalid": None, "lines": []}
            continue
        out["records"] = max(out["records"], count)
        out[use] = None
        if bad:
            out[use] = {"line": bad[0].line, "reason": bad[0].reason, "detail": bad[0].detail, "invalid": len(bad),
                        "lines": [b.line for b in bad[:_SHOWN_LINES]]}
        elif count == 0:
            out[use] = {"line": None, "reason": "empty", "detail": "the file holds no records", "invalid": 0, "lines": []}
    return out


def _without_path(message: str, path: Path) -> str:
    """The server's storage path means nothing to the caller; the file is named by its id instead."""
    return message.replace(str(path), "the file")


def describe_problem(problem: dict, total: int | None = None) -> str:
    """"line 3: malformed_json: ... (2 invalid lines: 3, 7)" from a check_data problem."""
    where = f"line {problem['line']}: " if problem.get("line") else ""
    text = f"{where}{problem['reason']}: {problem['detail']}"
    if problem.get("invalid") and problem["invalid"] > 1:
        shown = ", ".join(map(str, problem["lines"])) + (", ..." if problem["invalid"] > len(problem["lines"]) else "")
        text += f" ({problem['invalid']} invalid lines{f' of {total}' if total else ''}: {shown})"
    return text


def create(root: Path, owner: str, chunks: Iterable[bytes], filename: str, purpose: str, max_bytes: int) -> dict:
    """Store, check (fine-tune files) and record an upload; returns its FileObject."""
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(f"purpose {purpose!r} is not one of {', '.join(UPLOAD_PURPOSES)}", param="purpose")
    file_id, path, size = store_upload(root, chunks, filename, max_bytes)
    status, details, checks = "processed", None, None
    if purpose == "fine-tune":
        checks = check_data(path)
        if checks["train"] and checks["heldout"]:
            status, details = "error", describe_problem(checks["train"], checks["records"])
    row = {"id": file_id, "owner": owner, "filename": Path(filename or "upload").name[:255], "purpose": purpose,
           "bytes": size, "created_at": store.now(), "path": str(path), "status": status,
           "status_details": details, "checks": checks}
    with store.connect(root) as db:
        store.insert(db, "files", row)
    return file_object(row)


def add_result(db, root: Path, owner: str, source: Path, filename: str) -> str:
    """Copy a job's artefact into the file store as a `fine-tune-results` file; returns its id.
    A copy: deleting the model or the run later leaves the results the job reported."""
    file_id = store.new_id("file-")
    final = root / "files" / f"{file_id}{_ext(filename)}"
    tmp = final.with_name(f".{final.name}.partial")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    store.insert(db, "files", {"id": file_id, "owner": owner, "filename": filename, "purpose": "fine-tune-results",
                               "bytes": final.stat().st_size, "created_at": store.now(), "path": str(final),
                               "status": "processed"})
    return file_id


def get(db, owner: str, file_id: str, param: str | None = None) -> dict:
    row = store.get(db, "files", file_id, owner)
    if row is None:
        raise not_found("file", file_id, param)
    return row


def list_page(db, owner: str, after: str | None, limit: int, order: str, purpose: str | None) -> dict:
    if order not in ("asc", "desc"):
        raise bad_request(f"order must be asc or desc, not {order!r}", param="order")
    if not 1 <= limit <= 10000:
        raise bad_request(f"limit must be 1 to 10000, not {limit}", param="limit")
    where, args = "owner = ?", [owner]
    if purpose:
        where, args = where + " AND purpose = ?", [owner, purpose]
    rows, more = store.page(db, "files", where, args, after, limit, newest_first=order == "desc")
    data = [file_object(r) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


def delete(root: Path, owner: str, file_id: str) -> dict:
    with store.connect(root) as db, store.transaction(db):
        row = get(db, owner, file_id)
        users = db.execute("SELECT id FROM jobs WHERE (training_file = ? OR validation_file = ?) AND status IN "
                           "('validating_files', 'queued', 'running', 'paused')", (file_id, file_id)).fetchall()
        if users:
            # The job reads the file when it starts, and again when it resumes before its data is prepared.
            raise bad_request(f"file {file_id} is used by job {users[0]['id']}, which has not finished; "
                              "cancel the job or wait for it, then delete the file", param="file_id", code="file_in_use")
        db.execute("DELETE FROM files WHERE id = ?", (file_id,))
    Path(row["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


def sweep(root: Path) -> None:
    """Remove what a killed upload left: temporary files, and stored files no row names."""
    with store.connect(root) as db:
        known = {Path(r["path"]).name for r in db.execute("SELECT path FROM files")}
    for p in (root / "files").iterdir():
        if p.name.startswith(".") or p.name not in known:
            p.unlink(missing_ok=True)
