"""One precision decision shared by every stage, on a machine where bf16 measures fast:
training, held-out loss, the eval's answers, chat and generate all run bf16, and chat and
generate give exactly the eval's answers. Plus the fp16 gradient-scaler step, the on-device
skip of a non-finite step, checkpoints that load on the CPU, and out-of-memory errors."""

from __future__ import annotations

import io
import json

import pytest
import torch

from helpers import cli_on_tiny, example_conversations, offline_env
from tunekit import hardware
from tunekit.config import MethodConfig, TrainConfig
from tunekit.data.batches import collate
from tunekit.data.template import tokenize_chat
from tunekit.hardware import Precision
from tunekit.models.loading import load_model
from tunekit.train import loop
from tunekit.train.compute import cast_frozen
from tunekit.train.methods import apply_method
from tunekit.train.optim import make_optimizer, make_scheduler

CPU = torch.device("cpu")


@pytest.fixture
def bf16_fast(monkeypatch):
    monkeypatch.setattr(hardware, "measure", lambda shapes, device, use_cache=True: {"fp32": 100.0, "bf16": 400.0, "cached": True})


@pytest.fixture
def bf16_run(tmp_path, tiny_model_dir, bf16_fast):
    code, _, runs, _ = cli_on_tiny(tmp_path, tiny_model_dir, "run", train={"epochs": 2},
                                   eval={"max_new_tokens": 8, "forgetting": False})
    assert code == 0
    return runs / "tiny"


def test_auto_runs_every_stage_in_bf16_and_chat_and_generate_answer_as_the_eval_did(bf16_run, tmp_path, monkeypatch):
    from tunekit.serve.batch import generate_file, read_prompts
    from tunekit.serve.chat import ChatSession, chat_loop, lines_of
    from tunekit.infer.load import open_model
    from tunekit.infer.sampling import Sampling

    state = json.loads((bf16_run / "train_state.json").read_text())
    assert state["precision"] == "bf16" and "bf16 400 vs fp32 100 GFLOP/s" in state["precision_reason"]
    scores = json.loads((bf16_run / "eval" / "scores.json").read_text())
    assert scores["precision"]["name"] == "bf16" and "400" in scores["precision"]["reason"]
    assert "evaluation precision on cpu: bf16 for every contender" in (bf16_run / "report.md").read_text()
    rows = [json.loads(x) for x in (bf16_run / "eval" / "predictions.jsonl").read_text().splitlines()]

    mp = offline_env(tmp_path)
    try:
        loaded = open_model(str(bf16_run))
        assert loaded.precision.name == "bf16" and all(p.dtype is torch.bfloat16 for p in loaded.model.parameters())
        assert not hasattr(loaded.model, "peft_config")  # merged before the cast, as the eval merged it
        for row in rows:
            session = ChatSession(loaded, Sampling(max_new_tokens=8))
            chat_loop(session, lines_of([row["question"]]), io.StringIO())
            assert session.turns[-1]["content"] == row["answers"]["tuned"]
        src = tmp_path / "prompts.jsonl"
        src.write_text("".join(json.dumps({"prompt": r["question"]}) + "\n" for r in rows))
        written = generate_file(loaded.model, loaded.tokenizer, read_prompts(src), tmp_path / "out.jsonl", "tuned", 8, 4)
        got = [json.loads(x)["answer"] for x in written.path.read_text().splitlines()]
        assert got == [r["answers"]["tuned"] for r in rows]
        # --precision fp32 is honoured for chat and generate alike
        assert open_model(str(bf16_run), precision="fp32").precision.name == "fp32"
        # A finished run keeps the precision it trained in, even where bf16 now measures slow
        # (a cache measured anew, another thread count): its chat stays its eval's model.
        monkeypatch.setattr(hardware, "measure", lambda shapes, device, use_cache=True: {"fp32": 100.0, "bf16": 10.0})
        again = open_model(str(bf16_run))
        assert again.precision.name == "bf16" and again.precision.reason.startswith("as the run trained (auto: ")
    finally:
        mp.undo()


def test_bf16_chat_switches_adapters_by_reloading_merged_weights(monkeypatch, bf16_fast, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "serve"))
    from serve_builders import USER, answers_of, make_adapter, peft_on, save_model, user

    from tunekit.serve.chat import ChatSession, chat_loop, lines_of
    from tunekit.infer.load import open_model
    from tunekit.infer.sampling import Sampling

    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "home"))
    base = save_model(tmp_path / "lively")
    a, b = make_adapter(base, tmp_path / "alpha", seed=1), make_adapter(base, tmp_path / "beta", seed=2)
    session = ChatSession(open_model(str(a)), Sampling(max_new_tokens=10))
    out = io.StringIO()
    chat_loop(session, lines_of([USER, "/reset", "/adapter off", USER, "/reset", f"/adapter {b}", USER, "/reset",
                                 "/adapter tuned", USER]), out)
    bf16 = Precision(torch.bfloat16, CPU, "test")
    tok = session.loaded.tokenizer

    def want(model):
        return answers_of(hardware.for_inference(model, bf16), tok, [user()], 10)[0]

    w_base, w_a, w_b = want(load_model(base)), want(peft_on(base, a).merge_and_unload()), want(peft_on(base, b).merge_and_unload())
    assert len({w_base, w_a, w_b}) == 3
    assert [x for x in out.getvalue().splitlines() if x in (w_base, w_a, w_b)] == [w_a, w_base, w_b, w_a]
    assert "bf16 on cpu" in session.header()

    # A load that fails mid-switch: the error is said, the model that answered before answers again.
    import tunekit.models.tuned as tuned

    real = tuned.load_answering
    monkeypatch.setattr(tuned, "load_answering", lambda base_dir, adapter, *a: (_ for _ in ()).throw(OSError("disk gone"))
                        if adapter == b else real(base_dir, adapter, *a))
    out = io.StringIO()
    chat_loop(session, lines_of(["/reset", "/adapter beta", USER]), out)
    assert "error: cannot load" in out.getvalue() and "disk gone" in out.getvalue() and session.active == "tuned"
    assert w_a in out.getvalue().splitlines()


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ex = [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(3)]
    return collate(ex, [0, 1, 2], tiny_tokenizer.pad_token_id)


def _lora(tiny_model_dir):
    torch.manual_seed(0)
    model, _ = apply_method(load_model(tiny_model_dir), MethodConfig(kind="lora", r=4, alpha=8))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    return model.train(), params, opt, make_scheduler(opt, TrainConfig(), 2)


def test_fp16_step_with_a_gradient_scaler_updates_fp32_weights(tiny_model_dir, batch):
    ref_model, ref_params, ref_opt, ref_sched = _lora(tiny_model_dir)
    fp32 = loop.optimizer_step(ref_model, [batch], ref_params, ref_opt, ref_sched, 1.0)[0]
    model, params, opt, sched = _lora(tiny_model_dir)
    fp16 = Precision(torch.float16, CPU, "test")
    assert cast_frozen(model, fp16) > 0  # the frozen base in fp16, as setup_training keeps it
    before = [p.detach().clone() for p in params]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    loss, norm = loop.optimizer_step(model, [batch], params, opt, sched, 1.0, fp16, scaler)
    assert float(loss) == pytest.approx(float(fp32), rel=0.02) and torch.isfinite(norm)
    assert all(p.dtype is torch.float32 for p in params) and any(not torch.equal(b, p) for b, p in zip(before, params))
    assert scaler.get_scale() == 2.0**8  # no overflow, no skipped step


def test_a_nonfinite_step_is_skipped_on_the_device(tiny_model_dir, batch, monkeypatch):
    model, params, opt, sched = _lora(tiny_model_dir)
    real = loop.supervised_loss_sum
    monkeypatch.setattr(loop, "supervised_loss_sum", lambda *a, **k: (real(*a, **k)[0] * float("nan"), 1))
    before = [p.detach().clone() for p in params]
    loss, norm = loop.optimizer_step(model, [batch], params, opt, sched, 1.0)
    assert not torch.isfinite(loss) and all(torch.equal(b, p) for b, p in zip(before, params))
    assert not hasattr(opt, "found_inf")  # cleared for the next step
    monkeypatch.setattr(loop, "supervised_loss_sum", real)
    loop.optimizer_step(model, [batch], params, opt, sched, 1.0)  # a good step afterwards does update
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_checkpoints_load_onto_the_cpu_whatever_device_wrote_them(tiny_model_dir, batch, tmp_path, monkeypatch):
    from tunekit.train import checkpoint

    model, params, opt, sched = _lora(tiny_model_dir)
    loop.optimizer_step(model, [batch], params, opt, sched, 1.0)
    checkpoint.save(tmp_path, 1, model, opt, sched, {}, keep_last=1)
    seen, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or real(*a, **k))
    fresh, _, fresh_opt, fresh_sched = _lora(tiny_model_dir)
    checkpoint.load(tmp_path / "step-1", fresh, fresh_opt, fresh_sched)
    assert seen == ["cpu"]


def test_out_of_memory_exits_2_naming_the_estimate_and_what_to_turn_down(tmp_path, tiny_model_dir, monkeypatch, capsys):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "optimizer_step", oom)
    code, *_ = cli_on_tiny(tmp_path, tiny_model_dir, "run")
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and "estimated" in err and "MB for a step" in err
    for knob in ("train.batch_size", "train.gradient_checkpointing", "method.layers", "data.max_length"):
        assert knob in err


@pytest.mark.parametrize("method, packing", [("lora", True), ("full", False), ("dora", False)])
def test_bf16_runs_every_method_and_packing(tmp_path, tiny_model_dir, bf16_fast, method, packing):
    code, _, runs, _ = cli_on_tiny(tmp_path, tiny_model_dir, "run", method={"kind": method}, data={"packing": packing},
                                   eval={"contenders": ["tuned"], "forgetting": False})
    assert code == 0
    state = json.loads((runs / "tiny" / "train_state.json").read_text())
    scores = json.loads((runs / "tiny" / "eval" / "scores.json").read_text())
    assert state["precision"] == "bf16" and scores["precision"]["name"] == "bf16"
    assert torch.isfinite(torch.tensor([state["valid_loss"], state["final_train_loss"], scores["valid_loss"]["tuned"]])).all()
