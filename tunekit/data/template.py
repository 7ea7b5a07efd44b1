"""Chat template and loss mask.

The conversation is rendered with the model's own chat template. Which tokens carry
loss is found by rendering, not by searching for marker strings: for an assistant
turn i, render(messages[:i], add_generation_prompt=True) is the text before the
answer and render(messages[:i+1]) the text through its end-of-turn token, so the span
between them is exactly what the model must learn to write, including the token that
tells it to stop. This works for templates without `{% generation %}` blocks.

Rendering every prefix whole costs the square of the turn count (a 5,000-turn
conversation took a minute), so later answers are rendered in a window: the last
CONTEXT messages before them, without the system prompt, and the window's text after its
history is what the answer adds to the whole rendering. That holds for every template
that renders a message the same whatever came long before it (ChatML, Llama 3, Gemma,
Mistral, Phi-3, SmolLM2, Qwen2.5 and every named template), and each window's piece is
checked against the whole rendering. A template where it does not hold (turns numbered
from the start, the system prompt repeated in every turn) fails that check, and the
conversation is masked by rendering every prefix whole: exact, but quadratic for those
templates only. A short conversation's windows are its own prefixes, so it is exact either way.

What carries loss (`train_on`):
  all_assistant   every assistant answer and its end-of-turn token (the default)
  last_assistant  only the final assistant answer; earlier ones are context
  all             every token of the rendered conversation, inputs too
An assistant message with OpenAI's `"weight": 0` never carries loss, in any mode: the
user marked that answer as one not to learn from, yet it stays in the context.

BOS: the rendered text is encoded without the tokenizer's own special tokens, because
templates such as Llama 3's write BOS themselves and the tokenizer would add a second.
Where the tokenizer normally adds a BOS and the template did not write one, it is put
back, so every sequence starts the way the model saw text in pre-training.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from jinja2 import TemplateError

from tunekit.errors import DataError

IGNORE = -100
TRAIN_ON = ("all_assistant", "last_assistant", "all")
CONTEXT = 4
"""Messages of history a window keeps before the answers it renders (two exchanges)."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken."""
    turns: int = 0
    """Assistant turns whose answers carry loss."""
    distill: bool = False
    """A replay example whose answers also learn the base model's distribution (train.replay.kl)."""

    @property
    def supervised(self) -> int:
        """Tokens that carry loss."""
        return sum(1 for t in self.labels if t != IGNORE)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, written by the model's own chat template."""
    try:
        fast = _fast_template(tokenizer)
        if fast is not None:
            return fast.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise DataError(f"the model's chat template failed on a conversation: {e}") from None


_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
          {"role": "user", "content": "R"}]


def _fast_template(tokenizer):
    """The compiled chat template, rendered directly, or None to go through transformers.

    `apply_chat_template` spends ~150 us per call on argument handling around a ~60 us
    render; preparing 100k records renders each at least once. The direct path is used
    only if it gives the same text as transformers on a probe conversation.
    """
    cached = getattr(tokenizer, "_tunekit_template", None)
    if cached is not None and cached[0] == tokenizer.chat_template:  # the template may be swapped
        return cached[1]
    fast = None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        tpl = _compile_jinja_template(tokenizer.chat_template)
        same = all(
            tpl.render(messages=m, add_generation_prompt=g, **tokenizer.special_tokens_map)
            == tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=g)
            for m in (_PROBE[:3], _PROBE) for g in (False, True)
        )
        fast = tpl if same else None
    except Exception:  # any surprise: keep the supported path
        fast = None
    try:
        tokenizer._tunekit_template = (tokenizer.chat_template, fast)
    except AttributeError:
        pass
    return fast


def missing_bos(tokenizer, ids: list[int]) -> int | None:
    """The BOS id to put before `ids`: set when the tokenizer adds a BOS to text it
    encodes normally and `ids` (encoded without special tokens) do not start with it."""
    bos = tokenizer.bos_token_id
    if bos is None or ids[:1] == [bos]:
        return None
    # Many tokenizers name a BOS they never add (SmolLM2's is <|im_start|>); only what
    # encoding actually produces tells whether the model expects one in front.
    return bos if tokenizer("x")["input_ids"][:1] == [bos] else None


def rendered_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of rendered conversations as `tokenize_chat` builds them: the BOS it
    puts in front when the template did not write one is counted, without encoding twice."""
    from tunekit.data.stats import token_counts

    bos = missing_bos(tokenizer, [])
    mark = tokenizer.bos_token or "\0"
    return [n + (bos is not None and not t.startswith(mark)) for t, n in zip(texts, token_counts(tokenizer, texts))]


def check_train_on(train_on: str) -> None:
    """Raise DataError unless `train_on` names a known loss scope."""
    if train_on not in TRAIN_ON:
        raise DataError(f"unknown train_on {train_on!r} (config key data.train_on); "
                        f"use one of {', '.join(TRAIN_ON)}")


def _weight(messages: list[dict], i: int) -> int:
    w = messages[i].get("weight", 1)
    if w not in (0, 1):
        raise DataError(f"message {i} has weight {w!r}; an assistant message's weight must be 0 (no loss) or 1")
    return int(w)


def answer_span(tokenizer, messages: list[dict], i: int, full: str) -> tuple[int, int]:
    """Character span in `full` (the whole rendering) of assistant answer i and its end-of-turn."""
    before = render(tokenizer, messages[:i], add_generation_prompt=True)
    through = render(tokenizer, messages[: i + 1])
    # Loss ends at the end-of-turn token: the newline a template adds after it is
    # formatting the model never has to produce.
    end = len(through.rstrip("\n "))
    if not full.startswith(before) or not full.startswith(through) or end < len(before):
        raise DataError(
            "the model's chat template does not render conversations incrementally "
            "(a prefix of the conversation is not a prefix of its rendering); "
            "the loss mask cannot be found. Use a model with a standard chat template."
        )
    return len(before), end


def _turns(messages: list[dict], train_on: str) -> tuple[list[int], list[int]]:
    """Indices of assistant messages whose answers carry loss, and of those that must not."""
    weights = {i: _weight(messages, i) for i, m in enumerate(messages) if m.get("role") == "assistant"}
    assistant = list(weights)[-1:] if train_on == "last_assistant" else list(weights)
    kept = [i for i in assistant if weights[i] == 1]
    dropped = [i for i in assistant if weights[i] == 0]
    return kept, dropped


class _NotLocal(Exception):
    """A window's rendering disagrees with the whole: mask by rendering every prefix instead."""


def _spans(tokenizer, messages: list[dict], marked: list[int], full: str) -> list[tuple[int, int]]:
    """Character spans in `full` of the answers `marked` (ascending), as `answer_span` finds them."""
    try:
        return _window_spans(tokenizer, messages, marked, full)
    except _NotLocal:
        return [answer_span(tokenizer, messages, i, full) for i in marked]


def _window_spans(tokenizer, messages: list[dict], marked: list[int], full: str) -> list[tuple[int, int]]:
    """`answer_span` for each marked answer at a cost in proportion to the conversation.

    The first answer is found from whole prefixes. For each later one, `pos` is where the
    rendering of messages[:a] ends in `full` (a: the message after the previous answer), and
    a window's rendering from a user turn CONTEXT messages before `a` tells what follows that
    point: the generation prompt, then the answer. Raises _NotLocal where a window does not
    agree with `full`, or where the prefixes would not give a mask (so the exact path says why).
    """
    first = 1 if messages and messages[0].get("role") == "system" else 0
    texts: dict[tuple[int, int, bool], str] = {}

    def text(start: int, stop: int, gen: bool = False) -> str:
        """messages[start:stop] rendered; start == first means the whole prefix messages[:stop]."""
        key = (start, stop, gen)
        if key not in texts:
            if start == first and stop == len(messages) and not gen:
                texts[key] = full
            elif start == first:
                texts[key] = render(tokenizer, messages[:stop], add_generation_prompt=gen)
            else:
                try:
                    texts[key] = render(tokenizer, messages[start:stop], add_generation_prompt=gen)
                except DataError:  # a template may refuse a conversation that lacks its system prompt
                    raise _NotLocal from None
        return texts[key]

    spans, pos, a = [], 0, first
    for i in marked:
        start = _window_start(messages, a, first)
        head = text(start, a) if a > start else ""
        before, through = text(start, i, gen=True), text(start, i + 1)
        if not (before.startswith(head) and through.startswith(head)
                and full.startswith(before[len(head):], pos) and full.startswith(through[len(head):], pos)):
            raise _NotLocal
        b, t = pos + len(before) - len(head), pos + len(through) - len(head)
        # As answer_span: loss ends before the newline or space a template writes after the end-of-turn.
        end = t
        while end > b and full[end - 1] in "\n ":
            end -= 1
        if end == b and b > 0 and full[b - 1] in "\n ":
            raise _NotLocal  # the answer is blank: let the exact path refuse it
        spans.append((b, end))
        pos, a = t, i + 1
    return spans


def _window_start(messages: list[dict], a: int, first: int) -> int:
    """Where a window for the messages after `a` begins: a user turn about CONTEXT messages
    before `a`, or `first` (the whole prefix) in a short conversation or an unusual one."""
    for j in range(a - CONTEXT, max(a - CONTEXT - 2, first), -1):
        if messages[j].get("role") == "user":
            return j
    return first


def tokenize_chat(tokenizer, messages: list[dict], train_on: str = "all_assistant") -> Tokenized:
    """Token ids and labels of one conversation; which tokens carry loss is set by `train_on`."""
    check_train_on(train_on)
    kept, dropped = _turns(messages, train_on)
    full = render(tokenizer, messages)
    # In "all" everything is learnt except answers weighted 0; otherwise only the kept answers.
    marked = dropped if train_on == "all" else kept
    spans = _merged(_spans(tokenizer, messages, marked, full))
    starts = [a for a, _ in spans]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = missing_bos(tokenizer, ids)
    if bos is not None:
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(offsets):
        k = bisect_right(starts, s) - 1  # the span starting at or before this token, if any
        inside = e > s and k >= 0 and s < spans[k][1]
        if inside != (train_on == "all"):
            labels[j] = ids[j]
    return Tokenized(ids, labels, len(kept))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same characters as sorted, non-overlapping spans, so each token finds its span by bisection."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the model to write the next assistant turn;
    the same prefix, BOS included, that training put before that turn's answer."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = missing_bos(tokenizer, ids)
    return ids if bos is None else [bos, *ids]
