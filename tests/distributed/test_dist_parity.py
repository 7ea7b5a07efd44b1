"""Two processes (gloo, CPU) train exactly as one: DDP and FSDP2, gradient sync skipped or not.

One torchrun launch runs the four trainings (tests/distributed/worker.py); each is compared with
the single-process reference run (conftest.py) step by step, and in what its checkpoints hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import TOL, assert_equals_reference, max_difference, outcome, prepared, run, torchrun

WORKER = Path(__file__).with_name("worker.py")
# A full fine-tune too, as `auto` shards one whose replica does not fit (lr 1e-3: AdamW's steps
# of ~lr per weight, on the tiny model's 31k weights).
FULL = ["method.kind=full", "train.lr=1e-3"]
# 3 micro-batches of 3 a step do not divide between 2 processes: each micro-batch is cut (2 + 1
# examples, and the epoch's last, of 1, leaves a process a stand-in of weight 0).
CUT = ["train.grad_accum=3", "train.batch_size=3"]
# Whole micro-batches are one process's tensors, so bf16 equals one process too.
BF16 = ["train.precision=bf16"]
JOBS = {"ddp": ("ddp", "skip"), "ddp-every": ("ddp", "every"), "fsdp2": ("fsdp2", "skip"), "fsdp2-every": ("fsdp2", "every"),
        "full-fsdp2": ("fsdp2", "skip", *FULL), "ddp-cut": ("ddp", "skip", *CUT), "fsdp2-cut": ("fsdp2", "skip", *CUT),
        "ddp-bf16": ("ddp", "skip", *BF16), "fsdp2-bf16": ("fsdp2", "skip", *BF16)}


@pytest.fixture(scope="module")
def jobs(case) -> dict[str, Path]:
    """The run folder of each of JOBS, trained by 2 processes in one torchrun launch."""
    tmp = case["tmp"] / "parity"
    folders = {name: prepared(case, tmp / name) for name in JOBS}
    args = [",".join([str(tmp / name), *job]) for name, job in JOBS.items()]
    run(torchrun("--standalone", "--nproc-per-node", "2", str(WORKER), str(case["config"]), *args),
        case["env"], tmp / "parity.log")
    return folders


def _reference(case, name: str, overrides: list[str]) -> Path:
    """The single-process run of the case with `overrides` (in this process)."""
    from helpers import offline_env
    from tunekit import pipeline
    from tunekit.config import load_config

    run_dir = prepared(case, case["tmp"] / f"{name}-reference")
    mp = offline_env(case["tmp"])
    try:
        pipeline.run_stage(load_config(case["config"], overrides), run_dir, "train")
    finally:
        mp.undo()
    return run_dir


@pytest.fixture(scope="module")
def references(case):
    """The single-process run of the case with FULL, CUT or BF16, trained on first use."""
    made: dict[str, Path] = {}

    def get(how: str) -> Path:
        if how not in made:
            made[how] = _reference(case, how, {"full": FULL, "cut": CUT, "bf16": BF16}[how])
        return made[how]

    return get


@pytest.fixture(scope="module")
def full_reference(references) -> Path:
    """The full fine-tune in one process."""
    return references("full")


def test_shards_hold_every_example_once():
    from tunekit.train.distributed import Ranks, shard

    for n in range(0, 12):
        batch = list(range(100, 100 + n))
        for world in (1, 2, 3, 4):
            parts = [shard(batch, r, world) for r in range(world)]
            assert sorted(sum(parts, [])) == batch  # none repeated, none dropped
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # Micro-batches that divide among the processes go whole, the k-th to process k % world.
    steps = [[0, 1], [2, 3, 4], [5], [6, 7]]
    assert [Ranks(r, 2, "ddp", "", None, None).share(steps) for r in (0, 1)] == [
        [([0, 1], 1.0), ([5], 1.0)], [([2, 3, 4], 1.0), ([6, 7], 1.0)]]
    assert Ranks(1, 4, "ddp", "", None, None).share(steps) == [([2, 3, 4], 1.0)]
    # Otherwise each is cut; a process whose part is empty runs a stand-in that weighs nothing.
    second = Ranks(1, 2, "ddp", "", None, None)
    assert second.share([[7]]) == [([7], 0.0)] and second.share([[7, 8, 9]]) == [([8], 1.0)]
    assert second.share([[1, 2], [3], [4, 5, 6]]) == [([2], 1.0), ([3], 0.0), ([5], 1.0)]
    assert "whole micro-batches" in second.describe(4, 2)
    assert "train.grad_accum=2 train.batch_size=4" in second.describe(1, 8)


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_two_processes_equal_one(jobs, case, name):
    """Per-step loss, tokens, held-out loss and the final adapter within 1e-5 of one process, with
    grad accumulation, uneven token counts and 37 examples (the last micro-batch: 1 example)."""
    run_dir = jobs[name]
    state = outcome(run_dir)["state"]
    assert (state["processes"], state["distributed"]) == (2, JOBS[name][0])
    diff = assert_equals_reference(run_dir, case)
    print(f"{name}: largest adapter difference from one process {diff:.2e}", file=sys.stderr)


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
@pytest.mark.parametrize("how", ["cut", "bf16"])
def test_two_processes_equal_one_cut_or_in_bf16(jobs, references, name, how):
    """Micro-batches cut among the processes (a step's count does not divide) equal one process in fp32;
    whole micro-batches equal it in bf16 too (measured: to the bit, DDP and FSDP2)."""
    diff = assert_equals_reference(jobs[f"{name}-{how}"], {"outcome": outcome(references(how))})
    print(f"{name}-{how}: largest adapter difference from one process {diff:.2e}", file=sys.stderr)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_skipping_gradient_sync_changes_nothing(jobs, strategy):
    skip, every = outcome(jobs[strategy])["adapter"], outcome(jobs[f"{strategy}-every"])["adapter"]
    assert max_difference(skip, every) <= 1e-6
    assert [m["loss"] for m in outcome(jobs[strategy])["metrics"]] == [m["loss"] for m in outcome(jobs[f"{strategy}-every"])["metrics"]]


def test_fsdp2_checkpoint_is_sharded_and_ddp_one_copy(jobs):
    """FSDP2 really shards: each process wrote half of every trainable tensor into dcp/."""
    from torch.distributed.checkpoint import FileSystemReader

    def chunks(name: str) -> set[int]:
        meta = FileSystemReader(str(jobs[name] / "checkpoints" / "step-4" / "dcp")).read_metadata()
        lora = [m for k, m in meta.state_dict_metadata.items() if k.startswith("model.") and "lora_A" in k]
        assert lora
        return {len(m.chunks) for m in lora}

    assert chunks("fsdp2") == {2} and chunks("ddp") == {1}


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_checkpoint_holds_adamw_moments_and_data_position(jobs, case, name, offline_home):
    """Checkpoint step-4 of the job, loaded in one process (DCP reshards), holds the single-process run's
    AdamW moments and step, its scheduler and its data position."""
    from tunekit.config import load_config
    from tunekit.train import checkpoint, checkpoint_dcp
    from tunekit.train.loop import setup_training
    from tunekit.models.loading import load_tokenizer

    cfg = load_config(case["config"])
    tok = load_tokenizer(case["model"])
    mine = setup_training(cfg, jobs[name], case["model"], tok)
    state = checkpoint_dcp.load(jobs[name] / "checkpoints" / "step-4", mine.model, mine.optimizer, mine.scheduler)
    ref = setup_training(cfg, case["run_dir"], case["model"], tok)
    ref_state = checkpoint.load(case["run_dir"] / "checkpoints" / "step-4", ref.model, ref.optimizer, ref.scheduler)
    assert state["step"] == ref_state["step"] == 4 and state["tokens_seen"] == ref_state["tokens_seen"]
    assert mine.scheduler.state_dict() == ref.scheduler.state_dict()
    names = {id(p): n for n, p in ref.model.named_parameters()}
    theirs = {n: p for n, p in mine.model.named_parameters()}
    compared = 0
    for p in ref.params:
        a, b = ref.optimizer.state[p], mine.optimizer.state[theirs[names[id(p)]]]
        assert float(a["step"]) == float(b["step"]) == 4
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(a[moment], b[moment], atol=TOL, rtol=1e-4), (names[id(p)], moment)
            compared += 1
        assert torch.allclose(p, theirs[names[id(p)]], atol=TOL, rtol=0)
    assert compared == 2 * len(ref.params) > 0
    assert any(float(ref.optimizer.state[p]["exp_avg"].abs().max()) > 0 for p in ref.params)


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_gathered_adapter_loads_in_peft_whole(jobs, case, name):
    """The checkpoint's adapter is the whole adapter gathered from the shards: PEFT loads it, every
    tensor has its full shape, no half of one is zero (a rank-0-only save leaves lora_B's other half at 0)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final = jobs[name] / json.loads((jobs[name] / "train_state.json").read_text())["final_checkpoint"]
    saved = load_file(str(final / "adapter_model.safetensors"))
    for key, t in saved.items():
        halves = t.chunk(2, dim=0)
        assert len(halves) == 2 and all(float(h.abs().max()) > 0 for h in halves), key
    base = AutoModelForCausalLM.from_pretrained(case["model"])
    loaded = PeftModel.from_pretrained(base, str(final))
    weights = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert len(weights) == len(saved) == len(case["outcome"]["adapter"])
    ref = case["outcome"]["adapter"]
    for key, t in ref.items():
        name_in_model = key.replace(".weight", ".default.weight")
        assert weights[name_in_model].shape == t.shape
        assert torch.allclose(weights[name_in_model], t, atol=TOL, rtol=0), key


def test_full_fine_tune_sharded_by_fsdp2_equals_one_process(jobs, full_reference):
    """Every weight of the model, gathered from the shards into one folder as one process writes it
    (the tied embedding and output matrix once), within 1e-5; the per-step losses too."""
    from safetensors.torch import load_file

    got, want = (json.loads((d / "train_state.json").read_text()) for d in (jobs["full-fsdp2"], full_reference))
    assert (got["distributed"], got["processes"], got["method"]) == ("fsdp2", 2, "full")
    weights = [load_file(str(d / s["final_checkpoint"] / "model.safetensors"))
               for d, s in ((jobs["full-fsdp2"], got), (full_reference, want))]
    diff = max_difference(*weights)
    assert diff <= TOL and len(weights[0]) > 10
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (jobs["full-fsdp2"], full_reference)]
    assert losses[0] == pytest.approx(losses[1], abs=TOL + 1e-9)
    print(f"full fine-tune, fsdp2: largest weight difference from one process {diff:.2e}", file=sys.stderr)
