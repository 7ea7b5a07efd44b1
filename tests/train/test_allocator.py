"""glibc returns freed tensor memory at once after return_freed_memory_promptly()."""

import os
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import sys, torch
from tunekit.train.allocator import return_freed_memory_promptly
pinned = return_freed_memory_promptly() if sys.argv[1] == "pin" else False
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
torch.empty(1 << 20).fill_(1)  # one freed mapped block: default glibc raises its threshold
base = rss_mb()
blocks = [torch.ones(1 << 18) for _ in range(300)]  # 300 x 1 MiB, written
last = blocks.pop()  # kept: the heap cannot shrink below a live block at its top
del blocks
print(pinned, round(rss_mb() - base))
"""


def _without(*names: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_pinned_threshold_returns_freed_activations():
    env = _without("TUNEKIT_MALLOC", "MALLOC_MMAP_THRESHOLD_")
    pinned, kept = subprocess_free(env, "pin")
    default, kept_default = subprocess_free(env, "none")
    assert pinned == "True" and default == "False"
    assert kept < 50, f"{kept} MiB of 300 freed MiB still resident with the pinned threshold"
    assert kept_default > 200, "the test no longer shows glibc's default keeping freed memory"


def subprocess_free(env: dict, mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env).stdout.split()
    return out[0], int(out[1])


def test_user_setting_wins():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert subprocess_free(env, "pin")[0] == "False"
    env = {**_without("MALLOC_MMAP_THRESHOLD_"), "TUNEKIT_MALLOC": "default"}
    assert subprocess_free(env, "pin")[0] == "False"
