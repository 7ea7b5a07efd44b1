"""An Ollama Modelfile whose TEMPLATE, SYSTEM and stop parameters come from the model's own
chat template, so the exported model sees in Ollama the text it was trained on.

Ollama templates are Go text/template, chat templates are Jinja, and no library translates
one into the other, so this is done here (the reason it is hand-written). Instead of
parsing Jinja, the chat template is rendered on a conversation with sentinel contents,
and the text between consecutive contents gives every transition: start -> system,
system -> user, user -> assistant, assistant -> user, user -> generation prompt, and
start -> user (which holds the template's default system prompt, if any, that becomes
the Modelfile's SYSTEM). The Go template emits exactly those pieces, as quoted Go string
literals so no whitespace trimming or brace in them can change the text. Before writing,
the same pieces are replayed on several conversations and must equal the Jinja rendering;
a template that is not a plain sequence of role blocks is refused rather than exported
wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunekit import atomic
from tunekit.errors import CheckpointError

_S = {"system": "TKsys0x5e", "u1": "TKuser0x1a", "a1": "TKasst0x2b", "u2": "TKuser0x3c"}
# Ollama's default context is 2048-4096 tokens; a tuned model is asked about as much as it was
# trained on, and a longer window only costs memory, so the model's own context up to this.
MAX_NUM_CTX = 4096


@dataclass(frozen=True)
class Pieces:
    begin_system: str  # start -> system content
    system_user: str  # system content -> first user content
    begin_user: str  # start -> first user content, when there is no system message
    user_assistant: str
    assistant_user: str
    generation: str  # after the last user content: the assistant header the model continues
    default_system: str | None  # what the template inserts when there is no system message
    bos: str = ""  # taken off the front: llama.cpp adds the BOS itself (add_bos_token), twice would be wrong
    trims: bool = False  # the template strips whitespace around contents; Go templates cannot


def _between(text: str, a: str | None, b: str | None) -> str:
    start = 0 if a is None else text.index(a) + len(a)
    end = len(text) if b is None else text.index(b, start)
    return text[start:end]


def template_pieces(tokenizer) -> Pieces:
    """The transitions of `tokenizer`'s chat template, read off renderings with sentinel contents."""
    from tunekit.data.template import render

    s = _S
    msgs = [{"role": "system", "content": s["system"]}, {"role": "user", "content": s["u1"]},
            {"role": "assistant", "content": s["a1"]}, {"role": "user", "content": s["u2"]}]
    try:
        full = render(tokenizer, msgs, add_generation_prompt=True)
        no_sys = render(tokenizer, msgs[1:], add_generation_prompt=True)
        order = [full.index(s[k]) for k in ("system", "u1", "a1", "u2")] + [no_sys.index(s["u1"])]
    except Exception as e:  # the template raised, or rewrote or dropped a content (no sentinel found)
        order, why = [], str(e)
    if not order or order[:4] != sorted(order[:4]):
        raise CheckpointError(f"the chat template does not render a system, user, assistant, user conversation with its "
                              f"contents intact and in order ({why if not order else 'reordered'}); it cannot be "
                              f"translated to an Ollama template") from None
    begin_system = _between(full, None, s["system"])
    system_user = _between(full, s["system"], s["u1"])
    begin_user = _between(no_sys, None, s["u1"])
    default = None
    if begin_user != begin_system and begin_user.startswith(begin_system) and begin_user.endswith(system_user):
        default = begin_user[len(begin_system): len(begin_user) - len(system_user)]
    bos = tokenizer.bos_token if _adds_bos(tokenizer) and begin_system.startswith(tokenizer.bos_token) else ""
    if bos and not begin_user.startswith(bos):
        bos = ""
    padded = render(tokenizer, [{"role": "user", "content": f"  {s['u1']}  "}], add_generation_prompt=True)
    return Pieces(begin_system[len(bos):], system_user, begin_user[len(bos):], _between(full, s["u1"], s["a1"]),
                  _between(full, s["a1"], s["u2"]), _between(full, s["u2"], None), default, bos,
                  trims=f"  {s['u1']}  " not in padded)


def _adds_bos(tokenizer) -> bool:
    from tunekit.data.template import missing_bos

    return bool(tokenizer.bos_token) and missing_bos(tokenizer, []) is not None


def replay(p: Pieces, messages: list[dict]) -> str:
    """What the Go template below renders for `messages`, as Ollama calls it: system messages
    collected into .System (the Modelfile's SYSTEM when there are none), the rest in order."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or p.default_system or ""
    out, prev = "", "start"
    if system:
        out, prev = p.begin_system + system, "system"
    for m in messages:
        if m["role"] == "user":
            out += {"start": p.begin_user, "system": p.system_user, "assistant": p.assistant_user}[prev] + m["content"]
        elif m["role"] == "assistant":
            out += p.user_assistant + m["content"]
        else:
            continue
        prev = m["role"]
    return out + (p.generation if prev == "user" else "")


def _lit(text: str) -> str:
    """A Go template action printing `text` verbatim (JSON string syntax is valid Go string syntax)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(p: Pieces) -> str:
    return "\n".join([
        '{{- $prev := "start" }}',
        "{{- if .System }}" + _lit(p.begin_system) + '{{ .System }}{{ $prev = "system" }}{{ end }}',
        "{{- range .Messages }}",
        '{{- if eq .Role "user" }}{{ if eq $prev "start" }}' + _lit(p.begin_user)
        + '{{ else if eq $prev "system" }}' + _lit(p.system_user) + "{{ else }}" + _lit(p.assistant_user)
        + '{{ end }}{{ .Content }}{{ $prev = "user" }}',
        '{{- else if eq .Role "assistant" }}' + _lit(p.user_assistant) + '{{ .Content }}{{ $prev = "assistant" }}',
        "{{- end }}",
        "{{- end }}",
        '{{- if eq $prev "user" }}' + _lit(p.generation) + "{{ end }}",
    ])


CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Price?"}],
    [{"role": "system", "content": "Be brief.\nUse lists."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e  "}],
]


def check_pieces(p: Pieces, tokenizer) -> int:
    """Replay the pieces on CHECK_CONVERSATIONS against the Jinja template; returns how many matched (all, or raises).

    A template that trims contents is checked on contents without surrounding whitespace:
    Ollama passes contents as sent, which differs only where a message starts or ends in spaces.
    """
    from tunekit.data.template import render

    for conv in CHECK_CONVERSATIONS:
        if p.trims:
            conv = [{**m, "content": m["content"].strip()} for m in conv]
        want, got = render(tokenizer, conv, add_generation_prompt=True), p.bos + replay(p, conv)
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
            raise CheckpointError(f"the chat template cannot be expressed as an Ollama template: on a {len(conv)}-message "
                                  f"conversation it renders {want[max(0, at - 20): at + 20]!r} where the translation gives "
                                  f"{got[max(0, at - 20): at + 20]!r}; not writing a Modelfile that would prompt the model wrongly")
    return len(CHECK_CONVERSATIONS)


def stop_strings(p: Pieces, tokenizer) -> list[str]:
    """The EOS token and every special token that opens or closes a turn."""
    special = [t for t in tokenizer.all_special_tokens if t]
    turn_text = p.user_assistant + p.assistant_user + p.generation + p.system_user
    stops = [tokenizer.eos_token] + [t for t in special if t in turn_text]
    return list(dict.fromkeys(s for s in stops if s))


def ollama_name(label: str) -> str:
    """A name `ollama create` accepts, from a run name or a path ("runs/Support Demo" -> "support-demo")."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", Path(label).name.lower()).strip("-._") or "tuned"


def modelfile(gguf_name: str, p: Pieces, stops: list[str], context: int | None, label: str) -> str:
    template = go_template(p)
    if '"""' in template or (p.default_system and '"""' in p.default_system):
        raise CheckpointError('the chat template contains """, which a Modelfile cannot quote')
    bad = [s for s in stops if '"' in s or not s.isprintable()]
    if bad:
        raise CheckpointError(f"stop strings {bad} contain a quote or an unprintable character, which a Modelfile cannot carry")
    lines = [f"# Ollama Modelfile for {label}, written by tunekit. Create the model with:",
             f"#   ollama create {ollama_name(label)} -f Modelfile", f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if p.default_system:
        lines.append(f'SYSTEM """{p.default_system}"""')
    # Ollama's Modelfile parser strips the quotes and applies no escapes: a stop is written as is.
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if context:
        lines.append(f"PARAMETER num_ctx {min(context, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def export_ollama(out_dir: Path, gguf_file: Path, tokenizer, context: int | None, label: str) -> dict:
    """Write `out_dir/Modelfile` next to `gguf_file` (which must be in `out_dir`)."""
    if gguf_file.parent.resolve() != out_dir.resolve() or not gguf_file.is_file():
        raise CheckpointError(f"the Modelfile needs its GGUF file beside it in {out_dir}; {gguf_file} is not there")
    p = template_pieces(tokenizer)
    checked = check_pieces(p, tokenizer)
    stops = stop_strings(p, tokenizer)
    atomic.write_text(out_dir / "Modelfile", modelfile(gguf_file.name, p, stops, context, label))
    figures = {"path": str(out_dir / "Modelfile"), "name": ollama_name(label), "stop": stops, "default_system": p.default_system,
               "conversations_checked": checked}
    if p.trims:
        figures["note"] = ("the chat template strips whitespace around message contents and Ollama cannot: "
                           "a message that starts or ends with spaces reaches the model with them")
    return figures
