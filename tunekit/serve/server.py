"""`tunekit serve`: the store, the job scheduler and the HTTP API in one process (uvicorn)."""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import ConfigError


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_upload_mb: float = 512,
          max_queue: int = 64, job_defaults: str | Path | None = None, precision: str | None = None) -> None:
    """Serve until stopped (Ctrl-C or SIGTERM: running jobs save a checkpoint and are queued again)."""
    import uvicorn

    from tunekit.serve import keys, store
    from tunekit.serve.app import create_app
    from tunekit.serve.settings import Settings, load_defaults

    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1 job must be able to run")
    if max_queue < 1:
        raise ConfigError(f"--max-queue {max_queue}: at least 1 job must be able to wait")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb}: give a size above 0")
    root = store.serve_home()
    settings = Settings(root=root, workers=workers, max_queue=max_queue, max_upload_bytes=int(max_upload_mb * 2**20),
                        defaults=load_defaults(job_defaults), precision=precision)
    store.init(root)
    live = [k for k in keys.list_keys(root) if k["revoked_at"] is None]
    shown = "0.0.0.0" if host in ("", "0.0.0.0") else host
    print(f"tunekit serve: state in {root}; {workers} job(s) at a time, up to {max_queue} waiting; "
          f"uploads up to {max_upload_mb:g} MB", flush=True)
    if not live:
        print("tunekit serve: no API keys yet, so every call is refused; create one with `tunekit keys create NAME`",
              flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tunekit serve: listening on {shown}, reachable from other machines; keys travel in clear text "
              "unless a TLS proxy sits in front", flush=True)
    print(f"tunekit serve: OpenAI-compatible API at http://{shown}:{port}/v1", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
