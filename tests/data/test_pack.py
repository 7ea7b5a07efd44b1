"""Packing: best-fit decreasing, and packed examples that cannot see each other."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from helpers import example_conversations, tiny_run_config

from tunekit import pipeline
from tunekit.config import Config
from tunekit.data.batches import collate
from tunekit.data.pack import best_fit_decreasing, collate_packed
from tunekit.data.template import IGNORE, Tokenized, tokenize_chat
from tunekit.errors import DataError
from tunekit.models import DEFAULT_MODEL, resolve, tunekit_home
from tunekit.models.loading import load_model, load_tokenizer
from tunekit.train.loop import evaluate_loss
from tunekit.train.loss import additive_mask, supervised_loss_sum

# Chat examples of 98..251 tiny-tokenizer tokens: rows of 300 hold one or two of them,
# so some rows pack several examples and some end in padding.
CAPACITY = 300


# --- best-fit decreasing -------------------------------------------------------------

def test_bfd_known_case():
    # 7 opens bin 0, 5 bin 1; 4 fits only bin 1; 3 fills bin 0; 2 fits nowhere, opens bin 2;
    # 1 fits bins 1 and 2 and goes to the tighter, bin 1.
    assert best_fit_decreasing([5, 3, 7, 2, 4, 1], 10) == [[2, 1], [0, 4, 5], [3]]


@pytest.mark.parametrize("seed", range(20))
def test_bfd_properties(seed):
    rng = random.Random(seed)
    cap = rng.randint(10, 100)
    lengths = [rng.randint(1, cap) for _ in range(rng.randint(1, 40))]
    bins = best_fit_decreasing(lengths, cap)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # Any-fit never leaves two bins at most half full: the later one's items fit the earlier.
    assert sum(1 for b in bins if 2 * sum(lengths[i] for i in b) <= cap) <= 1
    assert len(bins) >= math.ceil(sum(lengths) / cap)
    assert best_fit_decreasing(lengths, cap) == bins  # deterministic


def test_bfd_rejects_an_item_over_capacity():
    with pytest.raises(DataError, match="12 tokens.*max_length=10"):
        best_fit_decreasing([3, 12, 4], 10)


def test_bfd_empty():
    assert best_fit_decreasing([], 10) == []


# --- collate_packed ------------------------------------------------------------------

def test_collate_packed_layout():
    exs = [Tokenized([1, 2, 3], [1, 2, 3]), Tokenized([4, 5], [IGNORE, 5]), Tokenized([6, 7, 8, 9], [6, 7, 8, 9])]
    b = collate_packed(exs, [0, 1, 2], max_length=6, pad_id=0)
    # BFD: 4 tokens (ex 2) open row 0; 3 (ex 0) opens row 1; 2 (ex 1) fills row 0.
    assert b.input_ids.tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
    # Every example's first label is IGNORE: the token before it belongs to another example.
    assert b.labels.tolist() == [[IGNORE, 7, 8, 9, IGNORE, 5], [IGNORE, 2, 3, IGNORE, IGNORE, IGNORE]]
    assert b.tokens == 9 and b.supervised == 6
    m = b.attention_mask
    assert m.shape == (2, 1, 6, 6) and m.dtype == torch.bool
    assert m[0, 0, 5].tolist() == [False, False, False, False, True, True]  # ex 1 sees only itself
    assert m[0, 0, 3].tolist() == [True, True, True, True, False, False]  # causal inside ex 2
    assert m[1, 0].diagonal().all()  # padding attends itself: no fully masked row
    assert not m[1, 0, :3, 3:].any()  # real tokens never attend padding


# --- isolation on a model --------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    return [tokenize_chat(tiny_tokenizer, c["messages"]) for c in example_conversations(8, single_turn=False)]


def _layout(examples, capacity: int) -> list[tuple[int, int, int]]:
    """(example, row, start) of every example in collate_packed's rows: BFD order, end to end."""
    out = []
    for r, row in enumerate(best_fit_decreasing([len(e.input_ids) for e in examples], capacity)):
        start = 0
        for i in row:
            out.append((i, r, start))
            start += len(examples[i].input_ids)
    return out


def _max_logit_gap(model, examples, capacity: int, batch, mask) -> float:
    """Largest |logit in the packed row - logit of the example run alone| over all examples."""
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids).logits
        gap = 0.0
        for i, r, t in _layout(examples, capacity):
            ids = torch.tensor([examples[i].input_ids])
            assert torch.equal(batch.input_ids[r, t : t + ids.shape[1]], ids[0])
            alone = model(input_ids=ids).logits[0]
            gap = max(gap, float((packed[r, t : t + ids.shape[1]] - alone).abs().max()))
    return gap


def _check_isolation(model, examples, capacity: int) -> None:
    batch = collate_packed(examples, list(range(len(examples))), capacity, pad_id=0)
    assert batch.input_ids.shape[0] < len(examples)  # some row really holds several examples
    mask = additive_mask(batch.attention_mask, torch.float32, model.config)
    assert _max_logit_gap(model, examples, capacity, batch, mask) < 1e-4
    # Guard: the same rows and restarting positions under a plain 2D padding mask let
    # examples see each other, so the check above is able to fail.
    padding_mask = torch.zeros(batch.input_ids.shape, dtype=torch.long)
    for i, r, t in _layout(examples, capacity):
        padding_mask[r, t : t + len(examples[i].input_ids)] = 1
    assert _max_logit_gap(model, examples, capacity, batch, padding_mask) > 1e-2


def test_packed_logits_equal_logits_alone(model, examples):
    _check_isolation(model, examples, CAPACITY)


def test_packed_loss_and_gradients_equal_padded(model, examples):
    idx = list(range(len(examples)))
    padded, packed = collate(examples, idx, 0), collate_packed(examples, idx, CAPACITY, 0)
    assert packed.input_ids.numel() < padded.input_ids.numel()
    assert (packed.tokens, packed.supervised) == (padded.tokens, padded.supervised)

    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        total, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels, b.position_ids)
        total.backward()
        return float(total.detach()), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    want, n_want, g_want = loss_and_grads(padded)
    got, n_got, g_got = loss_and_grads(packed)
    model.zero_grad(set_to_none=True)
    assert n_got == n_want and abs(got - want) / abs(want) < 1e-4
    assert g_want.keys() == g_got.keys()
    for k in g_want:  # finite too: padding rows produced no NaN
        assert torch.allclose(g_got[k], g_want[k], rtol=1e-3, atol=1e-5), (k, (g_got[k] - g_want[k]).abs().max())


def test_packed_batch_without_padding_rows(model, examples):
    # Capacity equal to the total: one row, no padding at all.
    total = sum(len(e.input_ids) for e in examples[:3])
    b = collate_packed(examples, [0, 1, 2], total, 0)
    assert b.input_ids.shape == (1, total)
    with torch.no_grad():
        loss, n = supervised_loss_sum(model, b.input_ids, b.attention_mask, b.labels, b.position_ids)
    assert n == b.supervised and math.isfinite(float(loss))


def test_evaluate_loss_same_packed_or_padded(model, examples):
    padded = evaluate_loss(model, examples, 0, batch_size=4)
    packed = evaluate_loss(model, examples, 0, batch_size=4, pack_to=CAPACITY)
    assert abs(packed - padded) / padded < 1e-4


def test_training_with_packing_follows_the_padded_run(tiny_model_dir, tmp_path, offline_home):
    """Same examples per step, same losses: packing changes the tensors' shape, not the training."""
    losses = {}
    for packing in (False, True):
        raw = tiny_run_config(tmp_path / str(packing), tiny_model_dir, 40, train={"epochs": 0.5})
        raw["data"]["packing"] = packing
        run = tmp_path / str(packing) / "run"
        cfg = Config.model_validate(raw)
        pipeline.run_stage(cfg, run, "prepare")
        result = pipeline.run_stage(cfg, run, "train")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[packing] = [r["loss"] for r in rows] + [result["valid_loss"]]
        assert result["tokens_seen"] == rows[-1]["tokens"]
    assert len(losses[True]) >= 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


# --- the real model ------------------------------------------------------------------------

@pytest.mark.real_model
def test_packed_logits_equal_alone_on_real_model():
    try:
        path = resolve(DEFAULT_MODEL, offline=True)
    except Exception:  # noqa: BLE001 - any lookup failure means: not cached here
        pytest.skip(f"{DEFAULT_MODEL} is not in the model cache at {tunekit_home()} (run `make setup`)")
    tok = load_tokenizer(path)
    model = load_model(path).eval()
    exs = [tokenize_chat(tok, c["messages"]) for c in example_conversations(6, single_turn=False)]
    lengths = sorted(len(e.input_ids) for e in exs)
    _check_isolation(model, exs, lengths[-1] + lengths[-2])
