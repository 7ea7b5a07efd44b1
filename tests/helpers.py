"""Small builders shared by the stage tests: chat files, configs, the bundled example."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "support" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def example_conversations(n: int, single_turn: bool = True) -> list[dict]:
    """The first `n` clean conversations of the bundled example (no planted defect lines)."""
    manifest = json.loads((EXAMPLE / "noise_manifest.json").read_text())
    bad = {d["line"] for d in manifest["defects"]}
    out = []
    for i, line in enumerate((EXAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if i in bad:
            continue
        row = json.loads(line)
        roles = [m["role"] for m in row["messages"]]
        if single_turn and roles != ["user", "assistant"]:
            continue
        out.append(row)
        if len(out) == n:
            break
    return out


def heldout_items(n: int) -> list[dict]:
    lines = (EXAMPLE / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines[:n]]


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def tiny_run_config(tmp_path: Path, model_dir: Path, n_conversations: int = 40, n_eval: int = 0, **sections) -> dict:
    """A config dict for a tiny run on `n_conversations` example conversations."""
    data = {"train": str(write_jsonl(tmp_path / "in" / "train.jsonl", example_conversations(n_conversations))),
            "valid_fraction": 0.1}
    if n_eval:
        data["eval"] = str(write_jsonl(tmp_path / "in" / "heldout.jsonl", heldout_items(n_eval)))
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": {"base": str(model_dir)},
        "data": data,
        "method": {"kind": "lora", "r": 4, "alpha": 8},
        # Replay off: a random tiny model finishes no answer to the general prompts (tests/train/test_replay.py
        # turns it on with answers of its own).
        "train": {"epochs": 1, "lr": 1e-2, "batch_size": 6, "save_every": 0, "log_every": 1, "threads": 1,
                  "warmup_ratio": 0.0, "replay": {"fraction": 0.0}},
        "eval": {"few_shot_k": 1, "max_new_tokens": 4, "batch_size": 8},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def offline_env(tmp: Path):
    """A MonkeyPatch (undo it when done) with an empty TUNEKIT_HOME and no network sources,
    for module-scoped fixtures, which cannot use the function-scoped `monkeypatch`."""
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEKIT_HOME", str(tmp / "home"))
    mp.setenv("TUNEKIT_OFFLINE", "1")
    return mp


def cli_on_tiny(tmp: Path, model_dir: Path, command: str, **sections) -> tuple[int, Path, Path, dict]:
    """Write a tiny run config under `tmp` and run `tunekit COMMAND config --runs-dir tmp/runs`
    offline; returns (exit code, config path, runs folder, config dict)."""
    from tunekit.cli import main

    mp = offline_env(tmp)
    cfg = tiny_run_config(tmp, model_dir, 40, n_eval=4, **sections)
    path = write_config(tmp / "tiny.yaml", cfg)
    runs = tmp / "runs"
    try:
        code = main([command, str(path), "--runs-dir", str(runs)])
    finally:
        mp.undo()
    return code, path, runs, cfg


def poison_kv_cache(monkeypatch) -> None:
    """KV cache buffers start as NaN: a column read before it is written (or zeroed, for padding)
    turns an answer into garbage, so a test of the decode loop cannot pass by luck."""
    from tunekit.infer import cache

    allocate = cache._SlabLayer._allocate

    def poisoned(self, k, v):
        allocate(self, k, v)
        self.k_buf.fill_(float("nan"))
        self.v_buf.fill_(float("nan"))

    monkeypatch.setattr(cache._SlabLayer, "_allocate", poisoned)
