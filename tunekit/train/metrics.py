"""What training reports as it goes: metrics.jsonl, optional TensorBoard, peak memory.

metrics.jsonl has one row per logged optimiser step (loss, lr, grad norm, tokens/s,
memory) and `valid_loss` in the rows of steps where the held-out loss was measured.
It is the record every later view is drawn from: the loss plot, the report, TensorBoard.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from tunekit import atomic
from tunekit.errors import ConfigError


def peak_memory_mb(device: torch.device | None = None) -> dict:
    """Peak resident memory of this process, and the CUDA allocator's peak when on a GPU."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device is not None and device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def require_tensorboard() -> None:
    """Fail before training starts, not at the first log line, when TensorBoard is asked for but missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard is true but the tensorboard package is not installed; "
                          "run `pip install tensorboard` (or `pip install tunekit[tensorboard]`), "
                          "or set train.tensorboard=false") from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line cut by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows after `step`: a resumed run writes them again."""
    if path.exists():
        atomic.write_jsonl(path, [r for r in read_metrics(path) if r["step"] <= step])


class MetricsLog:
    """Appends rows to metrics.jsonl (flushed each row, so a kill loses at most one) and mirrors
    them to TensorBoard event files under `tensorboard_dir` when given."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self._file = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
