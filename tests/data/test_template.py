"""Chat template and loss mask, on three template families kept under tests/assets/templates:
SmolLM2's real template, and hand-written Llama-3 style and Qwen2.5 style ones, each on the
tiny byte-BPE tokenizer dressed with that family's special tokens and BOS behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import template_tokenizer

from tunekit.data.template import IGNORE, prompt_ids, render, rendered_lengths, tokenize_chat
from tunekit.errors import DataError, ModelError

TEMPLATES = Path(__file__).parent.parent / "assets" / "templates"
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# name -> (template file, extra special tokens, bos, end-of-turn, tokenizer adds BOS)
FAMILIES = {
    "smollm2": ("smollm2.jinja", [], "<|im_start|>", "<|im_end|>", False),
    "llama3": ("llama3.jinja", LLAMA3_SPECIAL, "<|begin_of_text|>", "<|eot_id|>", True),
    "qwen2": ("qwen2.jinja", [], None, "<|im_end|>", False),
}

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "How much does the Crest plan cost per seat?"},
    {"role": "assistant", "content": "The Crest plan costs $43 per seat per month."},
    {"role": "user", "content": "Where do I rotate an API key?"},
    {"role": "assistant", "content": "Go to Settings > Security > API keys and click Rotate."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "Hello! Thanks, that helps a lot."},
]
SINGLE = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]


def family_tokenizer(name: str, template: str | None = None):
    file, special, bos, eot, add_bos = FAMILIES[name]
    text = template if template is not None else (TEMPLATES / file).read_text()
    return template_tokenizer(text, special, bos=bos, eos=eot, add_bos=add_bos)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    """(tokenizer, end-of-turn token) for each template family."""
    return family_tokenizer(request.param), FAMILIES[request.param][3]


def supervised_texts(tok, t) -> list[str]:
    """Each maximal run of loss-carrying tokens, decoded."""
    runs, cur = [], []
    for lab in [*t.labels, IGNORE]:
        if lab != IGNORE:
            cur.append(lab)
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    return runs


def answers(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("messages", [SINGLE, CONVERSATION], ids=["single", "multi"])
def test_loss_on_each_answer_and_its_end_of_turn_only(family, messages):
    tok, eot = family
    t = tokenize_chat(tok, messages)
    assert len(t.labels) == len(t.input_ids)
    assert all(lab in (IGNORE, i) for lab, i in zip(t.labels, t.input_ids))
    # System prompts (given or the template's default), user turns and headers carry no loss.
    assert supervised_texts(tok, t) == [a + eot for a in answers(messages)]
    assert t.turns == len(answers(messages))
    assert tok.decode(t.input_ids, skip_special_tokens=False) == render(tok, messages)


def test_token_after_end_of_turn_is_not_supervised(family):
    tok, eot = family
    t = tokenize_chat(tok, CONVERSATION)
    end = tok.convert_tokens_to_ids(eot)
    after = [t.labels[j + 1] for j, (i, lab) in enumerate(zip(t.input_ids, t.labels))
             if i == end and lab != IGNORE and j + 1 < len(t.labels)]
    # "\n" (ChatML, also after the last turn) or the next header (Llama 3, nothing after the last).
    assert len(after) >= 2 and set(after) == {IGNORE}


def test_weight_zero_answer_stays_in_context_without_loss(family):
    tok, eot = family
    msgs = [dict(m) for m in CONVERSATION]
    msgs[2]["weight"] = 0
    msgs[4]["weight"] = 1
    t = tokenize_chat(tok, msgs)
    assert supervised_texts(tok, t) == [a + eot for a in answers(msgs)[1:]]
    assert t.turns == 2
    assert tok.decode(t.input_ids, skip_special_tokens=False) == render(tok, msgs)
    assert msgs[2]["content"] in tok.decode(t.input_ids)


def test_last_assistant_supervises_only_the_final_answer(family):
    tok, eot = family
    t = tokenize_chat(tok, CONVERSATION, train_on="last_assistant")
    assert supervised_texts(tok, t) == [answers(CONVERSATION)[-1] + eot]
    assert t.turns == 1
    assert t.input_ids == tokenize_chat(tok, CONVERSATION).input_ids
    msgs = [dict(m) for m in CONVERSATION]
    msgs[-1]["weight"] = 0
    assert tokenize_chat(tok, msgs, train_on="last_assistant").supervised == 0


def test_all_supervises_every_token_but_weight_zero_answers(family):
    tok, eot = family
    t = tokenize_chat(tok, CONVERSATION, train_on="all")
    assert t.labels == t.input_ids
    assert t.turns == 3
    msgs = [dict(m) for m in CONVERSATION]
    msgs[4]["weight"] = 0
    t = tokenize_chat(tok, msgs, train_on="all")
    full = tok.decode(t.input_ids, skip_special_tokens=False)
    skipped = answers(msgs)[1] + eot
    kept = supervised_texts(tok, t)
    assert len(kept) == 2 and kept[0] + skipped + kept[1] == full
    assert t.turns == 2


def test_prompt_ids_are_the_training_prefix_of_each_answer(family):
    tok, _ = family
    full = tokenize_chat(tok, CONVERSATION).input_ids
    for i, m in enumerate(CONVERSATION):
        if m["role"] == "assistant":
            p = prompt_ids(tok, CONVERSATION[:i])
            assert full[: len(p)] == p
            assert first_label(tok, CONVERSATION, i) == len(p)


def first_label(tok, messages, i) -> int:
    """Index of the first loss-carrying token when only answer i is trained on."""
    t = tokenize_chat(tok, messages[: i + 1], train_on="last_assistant")
    return next(j for j, lab in enumerate(t.labels) if lab != IGNORE)


@pytest.mark.parametrize("bad", ["none", "assistant_only", ""])
def test_unknown_train_on_is_a_data_error(tiny_tokenizer, bad):
    with pytest.raises(DataError, match="unknown train_on .*all_assistant, last_assistant, all"):
        tokenize_chat(tiny_tokenizer, SINGLE, train_on=bad)


@pytest.mark.parametrize("weight", [0.5, 2, "0", None])
def test_bad_weight_is_a_data_error(tiny_tokenizer, weight):
    msgs = [SINGLE[0], dict(SINGLE[1], weight=weight)]
    with pytest.raises(DataError, match="weight must be 0 .* or 1"):
        tokenize_chat(tiny_tokenizer, msgs)


# --- BOS: exactly one where the model expects one, none where it has no BOS -------------------

def _bos_count(tok, ids: list[int]) -> int:
    return sum(1 for i in ids if i == tok.bos_token_id)


def test_template_writing_bos_and_tokenizer_adding_bos_give_one():
    tok = family_tokenizer("llama3")
    bos = tok.bos_token_id
    assert tok("x")["input_ids"][0] == bos  # this tokenizer adds BOS by itself
    assert render(tok, SINGLE).startswith("<|begin_of_text|>")  # and so does the template
    for ids in (tokenize_chat(tok, SINGLE).input_ids, tokenize_chat(tok, SINGLE, train_on="all").input_ids,
                prompt_ids(tok, SINGLE[:1])):
        assert ids[0] == bos and _bos_count(tok, ids) == 1


def test_template_without_bos_gets_the_tokenizers_bos_once():
    template = (TEMPLATES / "llama3.jinja").read_text().replace("{{- bos_token }}", "")
    tok = family_tokenizer("llama3", template)
    assert "<|begin_of_text|>" not in render(tok, SINGLE)
    t = tokenize_chat(tok, SINGLE)
    assert t.input_ids[0] == tok.bos_token_id and _bos_count(tok, t.input_ids) == 1
    assert t.labels[0] == IGNORE and supervised_texts(tok, t) == ["Hi.<|eot_id|>"]
    p = prompt_ids(tok, SINGLE[:1])
    assert p[0] == tok.bos_token_id and _bos_count(tok, p) == 1
    assert t.input_ids[: len(p)] == p


def test_tokenizer_without_bos_gets_none():
    tok = family_tokenizer("qwen2")
    assert tok.bos_token_id is None
    text = render(tok, SINGLE)
    assert tokenize_chat(tok, SINGLE).input_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tokenize_chat(tok, SINGLE).input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_named_bos_the_tokenizer_never_adds_is_not_prepended(tiny_tokenizer):
    # SmolLM2 names <|im_start|> as BOS but never adds it: one <|im_start|> per rendered turn
    # (default system + user + assistant), nothing extra in front.
    t = tokenize_chat(tiny_tokenizer, SINGLE)
    assert t.input_ids.count(tiny_tokenizer.bos_token_id) == 3
    assert prompt_ids(tiny_tokenizer, SINGLE[:1]).count(tiny_tokenizer.bos_token_id) == 3


@pytest.mark.parametrize("case", ["llama3", "llama3-no-bos-in-template", "qwen2", "tiny"])
def test_rendered_lengths_equal_tokenize_chat_lengths(case, tiny_tokenizer):
    """prepare and inspect count tokens without the mask; the counts must be what training sees."""
    if case == "tiny":
        tok = tiny_tokenizer
    elif case == "llama3-no-bos-in-template":
        tok = family_tokenizer("llama3", (TEMPLATES / "llama3.jinja").read_text().replace("{{- bos_token }}", ""))
    else:
        tok = family_tokenizer(case)
    convs = [SINGLE, SINGLE + [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Done."}]]
    assert rendered_lengths(tok, [render(tok, m) for m in convs]) == [len(tokenize_chat(tok, m).input_ids) for m in convs]


def test_prompt_ids_end_with_generation_prompt(tiny_tokenizer):
    msgs = [{"role": "user", "content": "What is the refund window?"}]
    ids = prompt_ids(tiny_tokenizer, msgs)
    gen = tiny_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(gen):] == gen
    text = tiny_tokenizer.decode(ids, skip_special_tokens=False)
    assert text.endswith("What is the refund window?<|im_end|>\n<|im_start|>assistant\n")


# --- The real SmolLM2 tokenizer, when `make setup` has cached it --------------------------------

@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from tunekit.models import DEFAULT_MODEL, resolve
    from tunekit.models.loading import load_tokenizer

    try:
        path = resolve(DEFAULT_MODEL, offline=True)
    except ModelError:
        pytest.skip(f"{DEFAULT_MODEL} is not in the model cache (run `make setup`, or set TUNEKIT_HOME)")
    return load_tokenizer(path)


@pytest.mark.real_model
def test_real_smollm2_template_and_mask(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.chat_template.strip() == (TEMPLATES / "smollm2.jinja").read_text().strip()
    t = tokenize_chat(tok, CONVERSATION)
    assert supervised_texts(tok, t) == [a + "<|im_end|>" for a in answers(CONVERSATION)]
    assert tok.decode(t.input_ids, skip_special_tokens=False) == render(tok, CONVERSATION)
    t = tokenize_chat(tok, SINGLE)
    assert supervised_texts(tok, t) == ["Hi.<|im_end|>"]  # the default system prompt is context
    assert t.input_ids.count(tok.bos_token_id) == 3  # <|im_start|> per turn, none added in front
    p = prompt_ids(tok, SINGLE[:1])
    assert t.input_ids[: len(p)] == p and t.labels[len(p)] != IGNORE and t.labels[len(p) - 1] == IGNORE
