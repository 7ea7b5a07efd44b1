"""Who may write a run folder, and where what a rerun replaces goes.

A run folder belongs to the config file that created it (`origin.json`): a second config
file with the same run name would otherwise replace the first run's checkpoints and scores
without a word, as every config without a `name` is the run `run`. A lock file keeps two
commands out of one folder at a time. And what a rerun replaces (a changed training config's
checkpoints, old scores) is moved to `.previous/<hash>/` instead of being deleted: the most
recent replaced version is always one `mv` away.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from tunekit import atomic
from tunekit.config import Config
from tunekit.errors import ConfigError

ORIGIN = "origin.json"
PREVIOUS = ".previous"
LOCK = ".lock"


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differing_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config trees (missing on one side counts)."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    # `auto` is settled into the run's config.yaml on the first stage (pipeline.settle_template).
    return [k for k in keys if not (k == "model.chat_template" and b.get(k) == "auto")]


def claim(run_dir: Path, config_file: str | Path, cfg: Config, force: bool = False) -> None:
    """Make sure `run_dir` is this config file's run, recording it in origin.json on first use.

    Another file is refused, naming both files and the keys that differ, unless `force`: then
    the folder passes to the new file and its stages rerun (what they replace is set aside).
    A folder made before origin.json existed is adopted by whichever file runs it next."""
    mine = str(Path(config_file).resolve())
    origin = run_dir / ORIGIN
    recorded = json.loads(origin.read_text()).get("config_file") if origin.is_file() else None
    if recorded not in (None, mine) and not force:
        saved = run_dir / "config.yaml"
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        keys = differing_keys(old or {}, cfg.model_dump(mode="json"))
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "") if keys else "none"
        raise ConfigError(
            f"run folder {run_dir} belongs to {recorded}, not {mine} (both name the run {cfg.name!r}); "
            f"settings that differ: {shown}. Give this config its own `name:` (or --runs-dir), or pass --force "
            f"to hand the folder to {Path(mine).name} (the other run's results are moved to {run_dir / PREVIOUS})")
    if recorded != mine:
        atomic.write_json(origin, {"config_file": mine, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` for the block; a second command on the same folder exits naming the holder.

    flock is released by the kernel when the holder dies, even by SIGKILL: no stale locks. A
    command that fails before writing anything leaves no folder behind (a config error must not
    create an empty run)."""
    made = [d for d in (run_dir.parent, run_dir) if not d.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"another tunekit command (PID {holder}) is working in {run_dir}; "
                              f"wait for it to finish, or stop it (it resumes when rerun)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        except BaseException:
            if made and {p.name for p in run_dir.iterdir()} <= {LOCK, ORIGIN}:
                shutil.rmtree(run_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    made[0].rmdir() if made[0] != run_dir else None
            raise
    finally:
        os.close(fd)  # releases the lock


def previous_key(run_dir: Path) -> str:
    """The name under .previous/ for what the config now in config.yaml produced."""
    saved = run_dir / "config.yaml"
    return hashlib.sha256(saved.read_bytes()).hexdigest()[:12] if saved.is_file() else "unknown"


def set_aside(run_dir: Path, paths: list[Path], key: str) -> Path | None:
    """Move `paths` (inside run_dir) to `.previous/<key>/`, keeping only that one replaced version.

    A rename, so instant and free on the same disk. Returns the folder, None when nothing moved."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    root = run_dir / PREVIOUS
    dest = root / key
    if root.is_dir():
        for other in root.iterdir():
            if other.name != key:
                shutil.rmtree(other, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        shutil.copy2(saved, dest / "config.yaml")
    for p in paths:
        target = dest / p.relative_to(run_dir)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
    return dest
