"""Training through the pipeline: a run interrupted after a checkpoint and resumed ends
exactly where an uninterrupted run ends; checkpoints are PEFT folders; keep_last prunes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import offline_env, tiny_run_config
from tunekit import pipeline
from tunekit.config import Config
from tunekit.models.loading import load_model
from tunekit.train import loop


class Boom(RuntimeError):
    pass


def _cfg(tmp_path, tiny_model_dir) -> Config:
    raw = tiny_run_config(tmp_path, tiny_model_dir, 40, train={"save_every": 2, "keep_last": 2, "grad_accum": 2,
                                                              "batch_size": 3})
    return Config.model_validate(raw)


def _train(cfg, run_dir):
    pipeline.run_stage(cfg, run_dir, "prepare")
    return pipeline.run_stage(cfg, run_dir, "train")


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run; the in-memory training model is captured for the logits check."""
    tmp = tmp_path_factory.mktemp("straight")
    mp = offline_env(tmp)
    captured = {}
    real = loop.apply_method

    def capture(model, method):
        captured["model"], summary = real(model, method)
        return captured["model"], summary

    mp.setattr(loop, "apply_method", capture)
    try:
        cfg = _cfg(tmp, tiny_model_dir)
        result = _train(cfg, tmp / "run")
    finally:
        mp.undo()
    return cfg, tmp / "run", result, captured["model"]


def test_interrupted_and_resumed_run_matches_uninterrupted(straight, tmp_path, monkeypatch, offline_home):
    cfg_a, run_a, result_a, _ = straight
    steps = result_a["steps"]
    assert steps >= 5
    # Same config (same data file path), another run folder.
    cfg = cfg_a.model_copy()
    run_b = tmp_path / "run"
    pipeline.run_stage(cfg, run_b, "prepare")
    calls = {"n": 0}
    real = loop.supervised_loss_sum

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3 * cfg.train.grad_accum:  # dies during step 4, after the step-2 checkpoint
            raise Boom("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(loop, "supervised_loss_sum", dying)
    with pytest.raises(Boom):
        pipeline.run_stage(cfg, run_b, "train")
    assert [p.name for p in sorted((run_b / "checkpoints").iterdir())] == ["step-2"]
    assert not pipeline.is_done(cfg, run_b, "train")
    train_calls = {"n": 0}

    def counting(*a, **k):
        train_calls["n"] += torch.is_grad_enabled()
        return real(*a, **k)

    monkeypatch.setattr(loop, "supervised_loss_sum", counting)
    result_b = pipeline.run_stage(cfg, run_b, "train")
    # It resumed from step 2 rather than starting over.
    assert train_calls["n"] == (steps - 2) * cfg.train.grad_accum
    assert result_b["steps"] == steps
    assert abs(result_b["final_train_loss"] - result_a["final_train_loss"]) < 1e-4
    assert result_b["tokens_seen"] == result_a["tokens_seen"]
    wa = load_file(str(run_a / f"checkpoints/step-{steps}/adapter_model.safetensors"))
    wb = load_file(str(run_b / f"checkpoints/step-{steps}/adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0), k
    # metrics.jsonl has each step exactly once, losses equal to the uninterrupted run's.
    ma = [json.loads(x) for x in (run_a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in mb] == list(range(1, steps + 1))
    assert [m["loss"] for m in mb] == pytest.approx([m["loss"] for m in ma], abs=1e-4)


def test_checkpoint_is_a_peft_folder_with_the_training_models_logits(straight, tiny_model_dir, tiny_tokenizer):
    from peft import PeftModel

    _, run_dir, result, trained = straight
    ckpt = run_dir / result["final_checkpoint"]
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(load_model(tiny_model_dir), str(ckpt)).eval()
    trained.eval()
    ids = torch.tensor([tiny_tokenizer("<|im_start|>user\nWhere do I rotate an API key?<|im_end|>\n",
                                       add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    base = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        untouched = base(input_ids=ids).logits
    assert not torch.allclose(want, untouched, atol=1e-3)  # training did change the model
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_keep_last_prunes(straight):
    cfg, run_dir, result, _ = straight
    steps = result["steps"]
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert saved == ([s for s in range(2, steps, 2)] + [steps])[-cfg.train.keep_last:]
    for p in (run_dir / "checkpoints").iterdir():
        assert (p / "state.json").is_file() and (p / "trainer_state.pt").is_file()
