"""The training loop's features on the tiny model: held-out loss every N steps, early
stopping and the best checkpoint, NaN and disk-full failures, metrics and loss.png,
bf16 autocast with frozen bf16 base matrices, and activation checkpointing (the precision
decision itself is tested in tests/test_hardware.py)."""

from __future__ import annotations

import errno
import json
import math
import struct
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import example_conversations, tiny_run_config
from tunekit import pipeline
from tunekit.config import Config, MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.errors import CheckpointError, ConfigError
from tunekit.models.loading import load_model, load_tokenizer
from tunekit.hardware import FP32, Precision
from tunekit.models.logits import output_layer
from tunekit.train import checkpoint, loop
from tunekit.train.compute import cast_frozen, enable_activation_checkpointing
from tunekit.train.loss import supervised_loss_sum
from tunekit.train.methods import apply_method
from tunekit.train.metrics import MetricsLog, read_metrics, require_tensorboard
from tunekit.train.optim import make_optimizer, make_scheduler

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prepared(tmp_path, tiny_model_dir, **train) -> tuple[Config, object]:
    """A prepared tiny run (36 train, 4 held-out conversations: 6 steps of 6)."""
    cfg = Config.model_validate(tiny_run_config(tmp_path, tiny_model_dir, 40, train=train))
    run = tmp_path / "run"
    pipeline.run_stage(cfg, run, "prepare")
    return cfg, run


def _script_heldout(monkeypatch, losses: list[float]) -> None:
    """Replace the held-out measurement with a scripted sequence (the last value repeats)."""
    calls = []

    def scripted(*a, **k):
        calls.append(1)
        return losses[min(len(calls), len(losses)) - 1]

    monkeypatch.setattr(loop, "evaluate_loss", scripted)


def _steps(run) -> list[int]:
    return sorted(s for s, _ in checkpoint.list_checkpoints(run / "checkpoints"))


def test_eval_every_logs_heldout_rows_and_writes_loss_png(tmp_path, tiny_model_dir, offline_home):
    cfg, run = _prepared(tmp_path, tiny_model_dir, eval_every=2, log_every=3)
    result = pipeline.run_stage(cfg, run, "train")
    assert result["steps"] == 6
    rows = read_metrics(run / "metrics.jsonl")
    # Logged every 3 steps, and at every held-out measurement (every 2 and the last).
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    assert [r["step"] for r in rows if "valid_loss" in r] == [2, 4, 6]
    for r in rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_rss_mb"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["peak_rss_mb"] > 0
    assert result["valid_loss"] == pytest.approx(rows[-1]["valid_loss"], abs=1e-5)
    assert result["peak_rss_mb"] > 0 and result["precision"] in ("fp32", "bf16")
    state = json.loads((run / "train_state.json").read_text())
    assert state["best_step"] in (2, 4, 6) and state["stopped_early"] is False
    png = (run / "loss.png").read_bytes()
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100 and len(png) > 2000


@pytest.mark.parametrize("keep_best", [True, False])
def test_early_stopping_records_the_best_and_keep_best_survives_pruning(tmp_path, tiny_model_dir, offline_home,
                                                                       monkeypatch, capsys, keep_best):
    cfg, run = _prepared(tmp_path, tiny_model_dir, eval_every=1, early_stopping_patience=2, keep_best=keep_best,
                         keep_last=1, save_every=0)
    _script_heldout(monkeypatch, [2.0, 1.5, 1.6, 1.7, 1.0])  # best at step 2, then two worse evaluations
    result = pipeline.run_stage(cfg, run, "train")
    assert "early stopping" in capsys.readouterr().err
    assert result["stopped_early"] is True and result["steps"] == 4 and result["planned_steps"] == 6
    assert result["best_step"] == 2 and result["best_valid_loss"] == 1.5
    assert result["final_checkpoint"] == "checkpoints/step-4"
    assert [r["valid_loss"] for r in read_metrics(run / "metrics.jsonl")] == [2.0, 1.5, 1.6, 1.7]
    tuned, measured = checkpoint.tuned_checkpoint(run)
    if keep_best:
        # keep_last=1, yet the best survives pruning; the eval stage takes it.
        assert _steps(run) == [2, 4]
        assert result["best_checkpoint"] == "checkpoints/step-2"
        assert json.loads((run / "checkpoints/step-4/state.json").read_text())["best"] == 2
        assert tuned == run / "checkpoints/step-2" and measured == 1.5
    else:
        assert _steps(run) == [4]
        assert result["best_checkpoint"] is None
        assert tuned == run / "checkpoints/step-4" and measured == 1.7

    # Resuming a run that stopped early trains no further.
    trained = []
    real = loop.supervised_loss_sum
    monkeypatch.setattr(loop, "supervised_loss_sum", lambda *a, **k: trained.append(1) or real(*a, **k))
    again = loop.train(cfg, run, tiny_model_dir, load_tokenizer(tiny_model_dir), resume=True,
                       config_hash=pipeline.stage_hash(cfg, "train"))
    assert not trained and again["steps"] == 4 and again["stopped_early"] is True


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir,
                                                                               offline_home, monkeypatch):
    cfg, run = _prepared(tmp_path, tiny_model_dir, save_every=2, keep_last=2)
    real = loop.supervised_loss_sum
    calls = []

    def poisoned(*a, **k):
        total, n = real(*a, **k)
        calls.append(1)
        return (total * float("nan") if len(calls) == 3 else total), n  # step 3 goes NaN

    monkeypatch.setattr(loop, "supervised_loss_sum", poisoned)
    with pytest.raises(loop.TrainingDiverged) as err:
        pipeline.run_stage(cfg, run, "train")
    msg = str(err.value)
    assert "loss became nan at step 3" in msg and "last good checkpoint" in msg and "step-2" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert not (run / "train_state.json").exists()
    weights = load_file(str(run / "checkpoints/step-2/adapter_model.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())


def _tiny_full(tiny_model_dir):
    model = load_model(tiny_model_dir)
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    return model, opt, make_scheduler(opt, TrainConfig(), 10)


def test_disk_full_leaves_the_previous_checkpoint_intact(tmp_path, tiny_model_dir, monkeypatch):
    model, opt, sched = _tiny_full(tiny_model_dir)
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 1, model, opt, sched, {"tokens_seen": 7}, keep_last=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def full_disk(obj, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as err:
        checkpoint.save(root, 2, model, opt, sched, {"tokens_seen": 9}, keep_last=1)
    monkeypatch.undo()
    msg = str(err.value)
    assert "disk is full" in msg and str(root) in msg and f"{root / 'step-1'} is intact" in msg
    assert [p.name for p in root.iterdir()] == ["step-1"]  # nothing half-written beside it
    fresh, opt2, sched2 = _tiny_full(tiny_model_dir)
    assert checkpoint.load(root / "step-1", fresh, opt2, sched2)["tokens_seen"] == 7
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_writing(tmp_path, tiny_model_dir, monkeypatch):
    from tunekit import atomic
    from tunekit.errors import DiskFull

    model, opt, sched = _tiny_full(tiny_model_dir)
    need_before_a_step = checkpoint.checkpoint_bytes(model, opt)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # AdamW's moments exist from here on
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 1, model, opt, sched, {}, keep_last=2)
    size = sum(f.stat().st_size for f in (root / "step-1").iterdir())
    need = checkpoint.checkpoint_bytes(model, opt)
    assert 0.8 * size <= need <= 1.25 * size  # the estimate is the checkpoint's size, not a guess
    assert need_before_a_step == pytest.approx(need, rel=0.01)
    writes = []
    monkeypatch.setattr(checkpoint.torch, "save", lambda *a, **k: writes.append(a))
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 50 * 2**20)
    with pytest.raises(DiskFull) as err:
        checkpoint.save(root, 2, model, opt, sched, {}, keep_last=2)
    msg = str(err.value)
    assert f"needs about {need / 2**20:,.0f} MB" in msg and "50 MB free" in msg and f"{root / 'step-1'} is intact" in msg
    assert not writes and [p.name for p in root.iterdir()] == ["step-1"]


def test_training_that_cannot_write_one_checkpoint_stops_before_its_first_step(tmp_path, tiny_model_dir, offline_home,
                                                                              monkeypatch):
    from tunekit import atomic
    from tunekit.errors import DiskFull

    cfg, run = _prepared(tmp_path, tiny_model_dir)
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1)
    steps = []
    monkeypatch.setattr(loop, "optimizer_step", lambda *a, **k: steps.append(1))
    with pytest.raises(DiskFull, match="a checkpoint of this run needs about"):
        loop.train(cfg, run, tiny_model_dir, load_tokenizer(tiny_model_dir))
    assert not steps


def test_pruning_keeps_the_best_besides_the_last_k(tmp_path, tiny_model_dir):
    model, opt, sched = _tiny_full(tiny_model_dir)
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        checkpoint.save(root, step, model, opt, sched, {"best": 2}, keep_last=2)
    assert [s for s, _ in checkpoint.list_checkpoints(root)] == [2, 4, 5]


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(3)]
    return collate(ex, [0, 1, 2], tiny_tokenizer.pad_token_id)


BF16 = Precision(torch.bfloat16, torch.device("cpu"), "test")


def _one_step(tiny_model_dir, batch, precision, frozen_in_bf16=False):
    torch.manual_seed(0)
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="lora", r=4, alpha=8))
    cast = cast_frozen(model, precision) if frozen_in_bf16 else 0
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    before = [p.detach().clone() for p in params]
    loss, norm = loop.optimizer_step(model, [batch], params, opt, make_scheduler(opt, TrainConfig(), 1), 1.0, precision)
    assert all(p.dtype is torch.float32 for p in params)  # adapters: fp32 master weights
    assert all(s.dtype is torch.float32 for st in opt.state.values() for s in st.values() if s.dim())  # AdamW state too
    assert any(not torch.equal(b, p) for b, p in zip(before, params))  # and was updated
    return float(loss), float(norm), model, cast


def test_bf16_autocast_step_keeps_fp32_master_weights(tiny_model_dir, batch):
    fp32_loss, _, model, _ = _one_step(tiny_model_dir, batch, FP32)
    assert all(p.dtype is torch.float32 for p in model.parameters())
    bf16_loss, bf16_norm, model, _ = _one_step(tiny_model_dir, batch, BF16)
    assert all(p.dtype is torch.float32 for p in model.parameters())  # autocast alone casts nothing in place
    assert math.isfinite(bf16_loss) and math.isfinite(bf16_norm)
    assert bf16_loss == pytest.approx(fp32_loss, rel=0.02)  # bf16 matmuls, same loss to bf16 accuracy


def test_lora_keeps_its_frozen_base_in_bf16_with_the_same_loss(tiny_model_dir, batch):
    fp32_loss, fp32_norm, _, _ = _one_step(tiny_model_dir, batch, FP32)
    autocast_loss, _, _, _ = _one_step(tiny_model_dir, batch, BF16)
    loss, norm, model, cast = _one_step(tiny_model_dir, batch, BF16, frozen_in_bf16=True)
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert cast == len(frozen) > 0 and all(p.dtype is torch.bfloat16 for _, p in frozen)  # embeddings, norms, base matrices
    assert trained and all("lora_" in n and p.dtype is torch.float32 for n, p in trained)  # adapters stay fp32
    assert not any(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    # The loss of a bf16 base is the fp32 loss to bf16's accuracy, like autocast's over fp32 weights.
    assert loss == pytest.approx(fp32_loss, rel=0.02) and loss == pytest.approx(autocast_loss, rel=0.02)
    assert norm == pytest.approx(fp32_norm, rel=0.05)
    assert cast_frozen(model, FP32) == 0  # fp32 casts nothing


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir, batch, kind):
    def grads(checkpointing: bool):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind=kind, r=4, alpha=8))
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        output_layer(model)  # its one-time check against the model's forward runs the layers: not counted
        # Count a part inside a layer (the recompute does not rerun module hooks, so wrap forward).
        mlp = (model.get_base_model() if hasattr(model, "get_base_model") else model).model.layers[0].mlp
        forwards, plain = [], mlp.forward
        mlp.forward = lambda *a, **k: forwards.append(1) or plain(*a, **k)
        total, _ = supervised_loss_sum(model, batch.input_ids, batch.attention_mask, batch.labels)
        total.backward()
        return total.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, len(forwards)

    loss_a, grads_a, fwd_a = grads(False)
    loss_b, grads_b, fwd_b = grads(True)
    assert (fwd_a, fwd_b) == (1, 2)  # the layer really was recomputed in backward
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-5, rtol=0), n


def test_tensorboard_missing_fails_at_the_start(tmp_path, tiny_model_dir, offline_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        require_tensorboard()
    cfg, run = _prepared(tmp_path, tiny_model_dir, tensorboard=True)
    monkeypatch.setattr(loop, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking"))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        pipeline.run_stage(cfg, run, "train")


def test_tensorboard_mirrors_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb") as log:
        log.write({"step": 1, "loss": 2.5, "lr": 1e-3})
        log.write({"step": 2, "loss": 2.0, "lr": 1e-3, "valid_loss": 2.2})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize("kind, kept", [("full", torch.float32), ("lora", torch.bfloat16)])
def test_full_fine_tune_of_bf16_weights_keeps_fp32_master_weights(tmp_path, tiny_model_dir, offline_home, capsys, kind, kept):
    """Pure-bf16 AdamW rounds away every update under 1/256 of a weight: a full fine-tune keeps fp32
    masters (and says so); a LoRA kind's frozen base stays in the dtype asked for."""
    raw = tiny_run_config(tmp_path, tiny_model_dir, 40, model={"base": str(tiny_model_dir), "dtype": "bfloat16"},
                          method={"kind": kind})
    cfg = Config.model_validate(raw)
    run = tmp_path / "run"
    pipeline.run_stage(cfg, run, "prepare")
    s = loop.setup_training(cfg, run, tiny_model_dir, load_tokenizer(tiny_model_dir))
    assert {p.dtype for p in s.params} == {torch.float32}
    assert {p.dtype for p in s.model.parameters() if not p.requires_grad} <= {kept}
    if kind == "full":
        loop.train(cfg, run, tiny_model_dir, load_tokenizer(tiny_model_dir))
        out = " ".join(capsys.readouterr().err.split())
        assert "weights train as fp32 master copies" in out
