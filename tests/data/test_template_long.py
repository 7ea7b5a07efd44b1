"""Long conversations: the loss mask costs renders in proportion to the conversation, not
to its square, and gives the same ids and labels as rendering every prefix whole (the
reference below, which is how template.py found the mask before)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tiny import build_tokenizer, template_tokenizer

from tunekit.data import template
from tunekit.data.chat_templates import NAMED, apply_template
from tunekit.data.template import IGNORE, missing_bos, render, tokenize_chat
from tunekit.errors import DataError

TEMPLATES = Path(__file__).parent.parent / "assets" / "templates"
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TRAIN_ON = ("all_assistant", "last_assistant", "all")


def reference(tok, messages: list[dict], train_on: str) -> tuple[list[int], list[int]]:
    """Ids and labels found by rendering, for each answer, the whole conversation before it
    and through it: quadratic in the turn count, obviously right."""
    weights = {i: m.get("weight", 1) for i, m in enumerate(messages) if m["role"] == "assistant"}
    assistant = list(weights)[-1:] if train_on == "last_assistant" else list(weights)
    kept = [i for i in assistant if weights[i] == 1]
    marked = [i for i in assistant if weights[i] == 0] if train_on == "all" else kept
    full = render(tok, messages)
    spans = []
    for i in marked:
        before = render(tok, messages[:i], add_generation_prompt=True)
        through = render(tok, messages[: i + 1])
        end = len(through.rstrip("\n "))
        if not full.startswith(before) or not full.startswith(through) or end < len(before):
            raise DataError("not incremental")
        spans.append((len(before), end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = missing_bos(tok, ids)
    if bos is not None:
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(offsets):
        inside = e > s and any(a <= s < b for a, b in spans)
        if inside != (train_on == "all"):
            labels[j] = ids[j]
    return ids, labels


def _family(file: str, special: list[str], bos: str | None, eot: str, add_bos: bool):
    return lambda: template_tokenizer((TEMPLATES / file).read_text(), special, bos=bos, eos=eot, add_bos=add_bos)


def _named(name: str):
    def build():
        tok = build_tokenizer()
        tok.chat_template = None
        tok.add_special_tokens({"additional_special_tokens": list(NAMED[name].markers)})
        apply_template(tok, name)
        return tok
    return build


# Templates that render each turn the same whatever came long before it (the fast path),
# and two that do not: turns numbered from the start, and a system prompt repeated in
# every user turn (the exact fallback must give the reference's answer).
NUMBERED = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + ' ' + loop.index|string + '\n' + m['content'] + "
            "'<|im_end|>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant '"
            " + (messages|length + 1)|string + '\n' }}{%- endif -%}")
SYSTEM_EVERY_TURN = ("{%- set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' -%}"
                     "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '<|im_start|>user\n[' + sys + '] ' + "
                     "m['content'] + '<|im_end|>\n' }}{%- elif m['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' + "
                     "m['content'] + '<|im_end|>\n' }}{%- endif -%}{%- endfor -%}"
                     "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")


def _own(jinja: str):
    def build():
        tok = build_tokenizer()
        tok.chat_template = jinja
        return tok
    return build


BUILDERS = {
    "tiny": build_tokenizer,
    "smollm2": _family("smollm2.jinja", [], "<|im_start|>", "<|im_end|>", False),
    "llama3": _family("llama3.jinja", LLAMA3_SPECIAL, "<|begin_of_text|>", "<|eot_id|>", True),
    "qwen2": _family("qwen2.jinja", [], None, "<|im_end|>", False),
    **{f"named-{n}": _named(n) for n in sorted(NAMED)},
    "numbered": _own(NUMBERED),
    "system-every-turn": _own(SYSTEM_EVERY_TURN),
}

WORDS = ["plan", "seat", "  refund", "key\n", "Settings > Security", "30 days.", "error RW-4031", "\n\nok", "yes ",
         "émoji 🙂", "[INST]", "<b>bold</b>", "a\tb"]


def conversation(rng: random.Random, exchanges: int, system: bool, weight_zero: float) -> list[dict]:
    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))).strip() or "x"

    msgs = [{"role": "system", "content": text()}] if system else []
    for _ in range(exchanges):
        msgs.append({"role": "user", "content": text()})
        answer = {"role": "assistant", "content": text()}
        if rng.random() < weight_zero:
            answer["weight"] = 0
        msgs.append(answer)
    return msgs


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tok(request):
    return BUILDERS[request.param]()


def test_same_ids_and_labels_as_rendering_every_prefix(tok):
    rng = random.Random(7)
    cases = [conversation(rng, n, system, w) for n in (1, 2, 3, 5, 9, 24) for system in (False, True) for w in (0.0, 0.3)]
    for msgs in cases:
        for train_on in TRAIN_ON:
            try:
                want = reference(tok, msgs, train_on)
            except DataError:
                with pytest.raises(DataError):
                    tokenize_chat(tok, msgs, train_on)
                continue
            t = tokenize_chat(tok, msgs, train_on)
            assert (t.input_ids, t.labels) == want, (train_on, msgs)


def test_a_template_that_renders_the_last_answer_differently_is_refused_as_before():
    # The last message is marked as such: a prefix's rendering is not a prefix of the whole,
    # so there is no mask to find. Long or short, the same error.
    tok = _own("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + ('(last) ' if loop.last else '') + "
               "m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
               "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")()
    for n in (1, 12):
        msgs = conversation(random.Random(n), n, True, 0.0)
        with pytest.raises(DataError, match="incrementally"):
            tokenize_chat(tok, msgs)


def _count_rendered(monkeypatch) -> list[int]:
    sizes: list[int] = []

    def counting(tokenizer, messages, add_generation_prompt=False):
        text = render(tokenizer, messages, add_generation_prompt)
        sizes.append(len(text))
        return text

    monkeypatch.setattr(template, "render", counting)
    return sizes


@pytest.mark.parametrize("train_on", TRAIN_ON)
def test_five_thousand_turns_render_in_proportion_to_the_conversation(tiny_tokenizer, monkeypatch, train_on):
    msgs = []
    for t in range(2500):
        msgs += [{"role": "user", "content": f"q{t}"}, {"role": "assistant", "content": f"a{t}", "weight": int(t % 7 != 3)}]
    sizes = _count_rendered(monkeypatch)
    t = tokenize_chat(tiny_tokenizer, msgs, train_on)
    full = len(render(tiny_tokenizer, msgs))
    # Rendering every prefix whole costs ~2,500 full renderings' worth of text. Windows cost
    # three renderings of a few messages per answer: here, with answers of two characters
    # beside a default system prompt in every window, about ten full renderings.
    assert len(sizes) <= 3 * 2500 + 3
    assert sum(sizes) <= 40 * full, f"{sum(sizes) / full:.0f} full renderings' worth of text"
    assert t.turns == (2500 - 357 if train_on != "last_assistant" else 1)
    if train_on == "all_assistant":  # every answer weighted 1 carries loss, deep ones too; no question does
        text = tiny_tokenizer.decode([i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE])
        assert text.count("<|im_end|>") == 2500 - 357 and "a2499<|im_end|>" in text and "a2497<|im_end|>" in text
        assert "a2495" not in text and "q" not in text  # 2495 % 7 == 3: weight 0


def test_standard_templates_never_render_whole_prefixes_per_answer(tok, request, monkeypatch):
    """The comparison above is not won by the fallback: every template but the two made to
    defeat windows masks a long conversation without `answer_span` (whole prefixes)."""
    if request.node.callspec.params["tok"] in ("numbered", "system-every-turn"):
        pytest.skip("made to fall back")

    def whole_prefixes(*args):
        raise AssertionError("rendered whole prefixes")

    monkeypatch.setattr(template, "answer_span", whole_prefixes)
    for system in (False, True):
        msgs = conversation(random.Random(3), 24, system, 0.3)
        for train_on in TRAIN_ON:
            tokenize_chat(tok, msgs, train_on)
