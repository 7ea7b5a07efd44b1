"""The OpenAI-compatible HTTP API (FastAPI): Files, Fine-tuning jobs, Models.

Routes are thin: each checks the key (`require_key`), reads its parameters and calls the
plain functions of files.py, jobs.py and model_refs.py, which return OpenAI's objects as
dicts. Every error leaves in OpenAI's envelope; a failed POST also says `x-should-retry:
false`, since the official client would otherwise retry a job creation that the server
refused on purpose (a full queue is a 429, which it retries by default).

`require_key` is a FastAPI dependency returning the caller's owner name; any route added
to this app (chat completions) takes it with `owner: str = Depends(require_key)`.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunekit.errors import TunekitError
from tunekit.serve import files, jobs, keys, model_refs, store
from tunekit.serve.errors import ApiError, bad_request, envelope
from tunekit.serve.settings import Settings

_CHUNK = 1 << 20
_METADATA = re.compile(r"^metadata\[(.+)\]$")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def require_key(request: Request) -> str:
    """The owner of the request's `Authorization: Bearer KEY`; 401 in the envelope otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "no API key: send the header `Authorization: Bearer KEY` (create a key with "
                            "`tunekit keys create NAME` on the server's machine)", code="missing_api_key")
    with store.connect(settings_of(request).root) as db:
        owner = keys.owner_of(db, key.strip())
    if owner is None:
        raise ApiError(401, "the API key is not valid: unknown or revoked (`tunekit keys list` on the server's "
                            "machine shows the live keys)", code="invalid_api_key")
    return owner


def _error_response(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if request.method == "POST":
        headers.setdefault("x-should-retry", "false")
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error_response(request, e.status, e.body(), e.headers)

    @app.exception_handler(TunekitError)
    async def tunekit_error(request: Request, e: TunekitError):
        return _error_response(request, 400, envelope(400, str(e), code=e.kind.replace(" ", "_")))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error_response(request, 400, envelope(400, f"{param or 'request'}: {first['msg']}", "invalid_value", param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return _error_response(request, e.status_code, envelope(e.status_code, message))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        traceback.print_exc()
        return _error_response(request, 500, envelope(500, f"internal error: {type(e).__name__}: {e}", "internal_error"))


async def _upload(request: Request, s: Settings, owner: str) -> dict:
    """POST /v1/files: the size is checked from Content-Length before the body is parsed, and
    again while the file is copied (a body without a length is counted as it arrives)."""
    length = int(request.headers.get("content-length") or 0)
    if length > s.max_upload_bytes + _CHUNK:  # one MB of slack for the multipart framing
        # Read and drop the body (up to a bound) before answering: a client still sending
        # when the connection closes sees a broken pipe, not the 413.
        if length <= 4 * s.max_upload_bytes + 64 * _CHUNK:
            async for _ in request.stream():
                pass
        raise files.too_large(s.max_upload_bytes)
    form = await request.form(max_files=1, max_fields=8)
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise bad_request("a multipart field `file` holding the file is required", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise bad_request("a multipart field `purpose` is required (fine-tune for training data)", param="purpose")

    def chunks():
        while block := upload.file.read(_CHUNK):
            yield block

    try:
        return await run_in_threadpool(files.create, s.root, owner, chunks(), upload.filename or "upload",
                                       purpose, s.max_upload_bytes)
    finally:
        await upload.close()


def _router() -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/files")
    async def create_file(request: Request, owner: str = Depends(require_key)):
        return await _upload(request, settings_of(request), owner)

    @r.get("/files")
    def list_files(request: Request, after: str | None = None, limit: int = 10000, order: str = "desc",
                   purpose: str | None = None, owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            return files.list_page(db, owner, after, limit, order, purpose)

    @r.get("/files/{file_id}")
    def retrieve_file(request: Request, file_id: str, owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            return files.file_object(files.get(db, owner, file_id, "file_id"))

    @r.get("/files/{file_id}/content")
    def file_content(request: Request, file_id: str, owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            row = files.get(db, owner, file_id, "file_id")
        return FileResponse(row["path"], media_type="application/octet-stream")

    @r.delete("/files/{file_id}")
    def delete_file(request: Request, file_id: str, owner: str = Depends(require_key)):
        return files.delete(settings_of(request).root, owner, file_id)

    @r.post("/fine_tuning/jobs")
    async def create_job(request: Request, owner: str = Depends(require_key)):
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the request body is not JSON") from None
        return await run_in_threadpool(jobs.create, settings_of(request), owner, body)

    @r.get("/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: int = 20, owner: str = Depends(require_key)):
        metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _METADATA.match(k))}
        with store.connect(settings_of(request).root) as db:
            return jobs.list_page(db, owner, after, limit, metadata)

    @r.get("/fine_tuning/jobs/{job_id}")
    def retrieve_job(request: Request, job_id: str, owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            return jobs.job_object(jobs.get(db, owner, job_id))

    for action in ("cancel", "pause", "resume"):
        def change(request: Request, job_id: str, owner: str = Depends(require_key), action: str = action):
            return jobs.change_status(settings_of(request), owner, job_id, action)

        r.add_api_route(f"/fine_tuning/jobs/{{job_id}}/{action}", change, methods=["POST"], name=f"{action}_job")

    @r.get("/fine_tuning/jobs/{job_id}/events")
    def list_events(request: Request, job_id: str, after: str | None = None, limit: int = 20,
                    owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            return jobs.events_page(db, owner, job_id, after, limit)

    @r.get("/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = 10,
                         owner: str = Depends(require_key)):
        with store.connect(settings_of(request).root) as db:
            return jobs.checkpoints_page(settings_of(request), db, owner, job_id, after, limit)

    @r.get("/models")
    def list_models(request: Request, owner: str = Depends(require_key)):
        return model_refs.list_models(settings_of(request), owner)

    # {model:path}: the client sends '/' in a name (a hub id, a folder) as %2F, which arrives decoded.
    @r.get("/models/{model:path}")
    def retrieve_model(request: Request, model: str, owner: str = Depends(require_key)):
        return model_refs.retrieve(settings_of(request), owner, model)

    @r.delete("/models/{model:path}")
    def delete_model(request: Request, model: str, owner: str = Depends(require_key)):
        return model_refs.delete(settings_of(request), owner, model)

    return r


def create_app(settings: Settings, run_jobs: bool = True) -> FastAPI:
    """The app over the store at `settings.root`; with `run_jobs`, its lifetime runs the job
    scheduler (scheduler.py) too."""
    from tunekit.serve.scheduler import Scheduler

    store.init(settings.root)

    from tunekit.infer.pool import EnginePool

    engines = EnginePool(precision=settings.precision)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler = Scheduler(settings) if run_jobs else None
        if scheduler:
            await run_in_threadpool(scheduler.start)
        app.state.scheduler = scheduler
        try:
            yield
        finally:
            if scheduler:
                await run_in_threadpool(scheduler.stop)
            engines.close()

    app = FastAPI(title="tunekit", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(_router())
    _add_chat(app, settings, engines)
    _add_dashboard(app)
    return app


def _add_chat(app: FastAPI, settings: Settings, engines) -> None:
    """`POST /v1/chat/completions` (serve/completions.py) over one engine per base model: a name a
    key may call (a base, its fine-tuned models, their checkpoints) answers on its base's engine."""
    from tunekit.serve.completions import add_chat_route

    def served(name: str, owner: str):
        return engines.get(model_refs.resolve_model(owner, name, settings), label=name)

    add_chat_route(app, served, require_key)


DASHBOARD = Path(__file__).with_name("dashboard")


def _add_dashboard(app: FastAPI) -> None:
    """The dashboard at `/`: static files of the package, no build step. It signs in with an API key
    and calls the same /v1 routes as any client, so it can do nothing a key cannot."""
    from fastapi.staticfiles import StaticFiles

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD), name="dashboard")

    @app.get("/", include_in_schema=False)
    def dashboard():
        return FileResponse(DASHBOARD / "index.html")
