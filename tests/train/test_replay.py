"""Replay: the base model's answers are built once, cached per model and template, reused;
the mix is deterministic and sized by train.replay.fraction; a user's file replaces them."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import pytest
from helpers import example_conversations, tiny_run_config, write_jsonl

from tunekit import hardware
from tunekit.config import Config
from tunekit.data.template import IGNORE
from tunekit.errors import DataError
from tunekit.train import replay

PROMPTS = [
    {"id": "r1", "skill": "facts", "messages": [{"role": "user", "content": "Name a large river."}]},
    {"id": "r2", "skill": "chat", "messages": [{"role": "user", "content": "Hello there!"}]},
    {"id": "r3", "skill": "arithmetic", "messages": [{"role": "user", "content": "What is 40 plus 2?"}]},
    {"id": "r5", "skill": "arithmetic", "messages": [{"role": "user", "content": "What is 1 plus 2?"}], "required": [["3"]]},
    {"id": "r6", "skill": "arithmetic", "messages": [{"role": "user", "content": "What is 2 plus 2?"}], "required": [["4"]]},
    {"id": "r4", "skill": "multi_turn", "messages": [{"role": "user", "content": "I like tea."},
                                                     {"role": "assistant", "content": "Tea is nice."},
                                                     {"role": "user", "content": "Suggest a snack."}]},
]

MULTI_TURN = next(p for p in PROMPTS if p["skill"] == "multi_turn")


@pytest.fixture
def fake_generation(tmp_path, monkeypatch, offline_home):
    """Six bundled prompts, and a generator that leaves one answer unfinished at the cap and gets one
    known sum wrong (greedy and sampled alike), counting its calls."""
    import tunekit.infer.greedy as generate

    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    monkeypatch.setattr(replay, "PROMPTS_FILE", prompts)
    monkeypatch.setattr(replay, "SHIPPED", tmp_path / "shipped")
    calls = []

    def outputs(model, tokenizer, conversations, max_new_tokens, batch_size, label, samplers=None):
        calls.append(len(conversations))
        said = {"What is 1 plus 2?": "1 + 2 = 3.", "What is 2 plus 2?": "2 + 2 = 5."}
        return [(said.get(c[-1]["content"], f"answer {i}"), i != 2) for i, c in enumerate(conversations)]

    monkeypatch.setattr(generate, "greedy_outputs", outputs)
    return calls


def _cfg(fraction: float = 0.25, file: str | None = None) -> Config:
    return Config.model_validate({"data": {"train": "x.jsonl"}, "train": {"replay": {"fraction": fraction, "file": file}}})


def test_replay_count():
    assert replay.replay_count(800, 0.2) == 200
    assert replay.replay_count(800, 0.5) == 800
    assert replay.replay_count(800, 0.0) == 0


def test_answers_are_built_cached_and_reused(fake_generation, tiny_model_dir, tiny_tokenizer):
    pool = replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    # the wrong sum is tried again, sampled, RETRIES times; the unfinished open question is not
    assert fake_generation == [6] + [1] * replay.RETRIES and pool.generated_now
    assert pool.prompts == 6 and pool.dropped_unfinished == 1 and pool.dropped_wrong == 1 and len(pool.conversations) == 4
    assert pool.conversations[0] == PROMPTS[0]["messages"] + [{"role": "assistant", "content": "answer 0"}]
    asked = [c[-2]["content"] for c in pool.conversations]
    assert "What is 40 plus 2?" not in asked  # unfinished at the cap
    assert "What is 1 plus 2?" in asked and "What is 2 plus 2?" not in asked  # a known answer stated, and a wrong one
    cache = replay.store_dir() / f"{replay.cache_key(tiny_model_dir, tiny_tokenizer)}.jsonl"
    assert pool.cache == str(cache) and cache.is_file()
    meta = json.loads(cache.read_text().splitlines()[0])["meta"]
    assert meta["prompts"] == 6 and meta["dropped_unfinished"] == 1 and meta["dropped_wrong"] == 1
    assert meta["generation_seconds"] >= 0

    again = replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    assert len(fake_generation) == 1 + replay.RETRIES and not again.generated_now  # read back, not generated again
    assert again.conversations == pool.conversations and again.generation_seconds == pool.generation_seconds


def test_a_shipped_cache_is_used_when_the_store_has_none(fake_generation, tiny_model_dir, tiny_tokenizer):
    first = replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    replay.SHIPPED.mkdir()
    shutil.move(first.cache, replay.SHIPPED)
    pool = replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    assert len(fake_generation) == 1 + replay.RETRIES and pool.cache.startswith(str(replay.SHIPPED)) and not pool.generated_now


def test_the_cache_key_follows_the_weights_the_template_and_the_prompts(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                        monkeypatch):
    key = replay.cache_key(tiny_model_dir, tiny_tokenizer)
    assert key == replay.cache_key(tiny_model_dir, tiny_tokenizer)
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    assert replay.cache_key(other, tiny_tokenizer) == key  # the same weights elsewhere
    from tunekit.models.loading import load_model

    model = load_model(other)
    with __import__("torch").no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(other)
    assert replay.cache_key(other, tiny_tokenizer) != key  # other weights
    from tunekit.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    assert replay.cache_key(tiny_model_dir, tok) != key  # another template
    monkeypatch.setattr(replay, "PROMPTS_FILE", write_jsonl(tmp_path / "p.jsonl", PROMPTS))
    assert replay.cache_key(tiny_model_dir, tiny_tokenizer) != key  # other prompts


def test_a_failed_greedy_answer_is_tried_again_sampled_and_the_first_kept_try_replayed(fake_generation, tiny_model_dir,
                                                                                       tiny_tokenizer, monkeypatch):
    import tunekit.infer.greedy as generate

    seen, calls = [], []  # (prompt, sampled) of every answer asked for; one entry per call

    def outputs(model, tokenizer, conversations, max_new_tokens, batch_size, label, samplers=None):
        tries = len(calls)  # 0: the greedy answers, then one call per round of retries
        calls.append(label)
        seen.extend((c[-1]["content"], samplers is not None and samplers[i] is not None) for i, c in enumerate(conversations))
        said = {"What is 1 plus 2?": "1 + 2 = 3.",
                "What is 2 plus 2?": "2 + 2 = 4." if tries == 3 else "2 + 2 = 5.",  # right on the third sampled try
                "Hello there!": "Hello! How can I help?" if samplers else
                "I'm sorry for any misunderstanding, but as a chatbot I don't have the ability to greet you."}
        return [(said.get(c[-1]["content"], f"answer {i}"), c[-1]["content"] != "What is 40 plus 2?")
                for i, c in enumerate(conversations)]

    monkeypatch.setattr(generate, "greedy_outputs", outputs)
    pool = replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    answers = {c[-2]["content"]: c[-1]["content"] for c in pool.conversations}
    assert answers["What is 2 plus 2?"] == "2 + 2 = 4." and answers["Hello there!"] == "Hello! How can I help?"
    assert "What is 40 plus 2?" not in answers  # unfinished, and no known answer: not retried
    assert pool.sampled == 2 and pool.dropped_wrong == 0 and pool.dropped_declining == 0 and pool.dropped_unfinished == 1
    assert [q for q, sampled in seen if sampled] == ["Hello there!", "What is 2 plus 2?", "What is 2 plus 2?", "What is 2 plus 2?"]
    rows = [json.loads(x) for x in pathlib.Path(pool.cache).read_text().splitlines()[1:]]
    assert {r["id"] for r in rows if r.get("sampled")} == {"r2", "r6"}
    assert len(calls) == 4 and "2 of them found by sampling" in pool.describe()


def test_what_is_replayed():
    chat, refusal = ({"id": "x", "skill": skill, "messages": []} for skill in ("chat", "refusals"))
    declining = "I'm sorry for any misunderstanding, but as a chatbot designed to assist, I don't have the ability to do that."
    assert replay.verdict(chat, declining, True) == "declining"
    assert replay.verdict(chat, "As an AI, I can't feel tired, but thanks for asking!", True) == "declining"
    assert replay.verdict(refusal, declining, True) is None  # declining is the answer to a harmful request
    assert replay.verdict(chat, "I'm sorry to hear that. A walk might help.", True) is None
    assert replay.verdict(chat, "Hello", False) == "unfinished"
    recall = {"id": "y", "skill": "multi_turn", "messages": [], "required": [["Ravi"]]}
    assert replay.verdict(recall, "Your name is Ravi.", True) is None
    assert replay.verdict(recall, "I'm not familiar with your name.", True) == "wrong"


def test_each_retry_has_its_own_fixed_random_stream():
    assert replay._try_seed("r6", 0) == replay._try_seed("r6", 0)
    assert len({replay._try_seed(i, t) for i in ("r5", "r6") for t in range(replay.RETRIES)}) == 2 * replay.RETRIES


def test_no_finished_answer_is_a_clear_error(fake_generation, tiny_model_dir, tiny_tokenizer, monkeypatch):
    import tunekit.infer.greedy as generate

    monkeypatch.setattr(generate, "greedy_outputs", lambda m, t, convs, *a, **k: [("rambling", False)] * len(convs))
    with pytest.raises(DataError, match="no usable answer to 6 general prompts \\(6 unfinished.*train.replay.fraction: 0"):
        replay.pool_for(_cfg(), tiny_model_dir, tiny_tokenizer, hardware.FP32)


def test_examples_are_deterministic_without_repeats_until_the_pool_runs_out(tiny_tokenizer):
    convs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
             for i in range(10)]
    pool = replay.ReplayPool(convs, "self-distillation")
    ids = lambda exs: [tuple(e.input_ids) for e in exs]  # noqa: E731
    four = replay.replay_examples(pool, tiny_tokenizer, 12, 0.25, 512, seed=0)
    assert len(four) == 4 and len(set(ids(four))) == 4
    assert ids(four) == ids(replay.replay_examples(pool, tiny_tokenizer, 12, 0.25, 512, seed=0))
    assert ids(four) != ids(replay.replay_examples(pool, tiny_tokenizer, 12, 0.25, 512, seed=1))
    many = replay.replay_examples(pool, tiny_tokenizer, 15, 0.5, 512, seed=0)
    assert len(many) == 15 and len(set(ids(many[:10]))) == 10  # every conversation once before any repeats
    assert replay.replay_examples(pool, tiny_tokenizer, 12, 0.0, 512, seed=0) == []


def test_self_distilled_examples_learn_only_the_base_models_answer(tiny_tokenizer):
    conv = MULTI_TURN["messages"] + [{"role": "assistant", "content": "Biscuits."}]
    [ex] = replay.replay_examples(replay.ReplayPool([conv], "self-distillation"), tiny_tokenizer, 1, 0.5, 512, 0)
    learned = tiny_tokenizer.decode([t for t in ex.labels if t != IGNORE])
    assert "Biscuits." in learned and "Tea is nice." not in learned
    [user] = replay.replay_examples(replay.ReplayPool([conv], "mine.jsonl"), tiny_tokenizer, 1, 0.5, 512, 0)
    assert "Tea is nice." in tiny_tokenizer.decode([t for t in user.labels if t != IGNORE])  # data.train_on


def test_over_long_conversations_are_skipped(tiny_tokenizer):
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    exs = replay.replay_examples(replay.ReplayPool([long, short], "self-distillation"), tiny_tokenizer, 3, 0.5, 64, 0)
    assert len(exs) == 3 and all(len(e.input_ids) <= 64 for e in exs)
    with pytest.raises(DataError, match="fits data.max_length"):
        replay.replay_examples(replay.ReplayPool([long], "self-distillation"), tiny_tokenizer, 3, 0.5, 64, 0)


def test_a_users_file_replaces_the_base_models_answers(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = example_conversations(5) + [{"messages": [{"role": "user", "content": "no answer"}]}]
    path = write_jsonl(tmp_path / "general.jsonl", rows)
    pool = replay.pool_for(_cfg(file=str(path)), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    assert pool.source == str(path) and len(pool.conversations) == 5 and not pool.generated_now
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(DataError, match="holds no usable conversations.*line 1"):
        replay.pool_for(_cfg(file=str(empty)), tiny_model_dir, tiny_tokenizer, hardware.FP32)
    assert replay.pool_for(_cfg(fraction=0.0, file=str(path)), tiny_model_dir, tiny_tokenizer, hardware.FP32) is None


def test_a_run_mixes_replay_into_training_and_records_it(tmp_path, tiny_model_dir, offline_home, fake_generation):
    from tunekit import pipeline

    cfg = Config.model_validate(tiny_run_config(tmp_path, tiny_model_dir, 30, train={"replay": {"fraction": 0.2}}))
    run = tmp_path / "run"
    pipeline.run_stage(cfg, run, "prepare")
    n_domain = sum(1 for _ in (run / "data" / "train.jsonl").open())
    result = pipeline.run_stage(cfg, run, "train")
    want = round(n_domain * 0.2 / 0.8)
    assert result["train_examples"] == n_domain + want
    assert result["replay"] == {"fraction": 0.2, "kl": 0.0, "examples": want, "domain_examples": n_domain, "source": "self-distillation",
                                "pool": 4, "cache": result["replay"]["cache"], "generated_now": True,
                                "generation_seconds": result["replay"]["generation_seconds"], "prompts": 6,
                                "dropped_unfinished": 1, "dropped_wrong": 1, "dropped_declining": 0, "sampled": 0}
    assert json.loads((run / "train_state.json").read_text())["replay"]["examples"] == want
    from tunekit.eval.report import build_sections

    _, sections = build_sections(run)
    cost = next(blocks for title, blocks in sections if title == "Cost")
    assert any(f"replay: {want} of {n_domain + want} training examples" in item for item in cost[0]["items"])


def _lora_model(model_dir, perturb: bool):
    import torch

    from tunekit.config import MethodConfig
    from tunekit.models.loading import load_model
    from tunekit.train.methods import apply_method

    torch.manual_seed(0)
    model, _ = apply_method(load_model(model_dir), MethodConfig(kind="lora", r=4, alpha=8))
    if perturb:  # LoRA starts equal to the base (B = 0); move it away so the KL is not zero
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("packed", [False, True])
def test_the_kl_term_is_kl_from_the_base_on_replay_tokens_only(tiny_model_dir, tiny_tokenizer, packed):
    import torch
    import torch.nn.functional as F

    from tunekit.data.template import tokenize_chat
    from tunekit.train.loop import make_batch
    from tunekit.train.loss import supervised_loss_sum, supervised_rows

    convs = [[{"role": "user", "content": f"q{i} " * (i + 1)}, {"role": "assistant", "content": f"a{i} " * (3 + i)}]
             for i in range(3)]
    exs = [tokenize_chat(tiny_tokenizer, c) for c in convs]
    exs[1] = dataclasses.replace(exs[1], distill=True)  # only the middle example is replay
    b = make_batch(exs, [0, 1, 2], tiny_tokenizer.pad_token_id, 128 if packed else None)
    assert b.distill is not None and int(b.distill.sum()) == len(exs[1].input_ids)
    model = _lora_model(tiny_model_dir, perturb=True)
    with torch.no_grad():
        args = (model, b.input_ids, b.attention_mask, b.labels, b.position_ids)
        ce, n = supervised_loss_sum(*args)
        both, n2 = supervised_loss_sum(*args, distill=b.distill, kl_weight=0.5)
        # by hand: full logits of the tuned model and of the base (adapters off), at the replay example's positions
        row, col, _ = supervised_rows(b.labels)
        pick = b.distill[:, 1:][row, col]
        kw = {"attention_mask": b.attention_mask} if not packed else {}
        if packed:
            from tunekit.train.loss import additive_mask
            kw = {"attention_mask": additive_mask(b.attention_mask, torch.float32, model.config), "position_ids": b.position_ids}
        tuned = model(input_ids=b.input_ids, **kw).logits[row[pick], col[pick]]
        with model.disable_adapter():
            base = model(input_ids=b.input_ids, **kw).logits[row[pick], col[pick]]
        want = F.kl_div(F.log_softmax(tuned, -1), F.log_softmax(base, -1), log_target=True, reduction="sum")
    assert n2 == n and float(want) > 1e-4
    assert float(both - ce) == pytest.approx(0.5 * float(want), rel=1e-3)  # a difference of two float32 sums
    fresh = _lora_model(tiny_model_dir, perturb=False)  # tuned == base: no KL at all
    with torch.no_grad():
        a, _ = supervised_loss_sum(fresh, *args[1:], distill=b.distill, kl_weight=1.0)
        c, _ = supervised_loss_sum(fresh, *args[1:])
    assert float(a - c) == pytest.approx(0.0, abs=1e-4)


def test_kl_needs_a_lora_method():
    with pytest.raises(ValueError, match="train.replay.kl"):
        Config.model_validate({"data": {"train": "x.jsonl"}, "method": {"kind": "full"}, "train": {"replay": {"kl": 1.0}}})
