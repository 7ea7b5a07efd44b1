"""Chat templates: the model's own, a named one, or a Jinja file (config key model.chat_template).

Base checkpoints (Llama, Qwen, Gemma ... without -Instruct) ship no chat template, and a GGUF
import may lose it. tunekit trains conversations, so it needs one, and every later stage must
format prompts exactly as training did: eval, chat, generate and the exports all load the
tokenizer through `apply_template`, with the run's setting.

`auto` keeps the model's own template; a model without one gets DEFAULT_FOR_BASE, which is
written out in plain text with tokens the model already has (its EOS ends each answer), so
nothing new must be learnt from random embedding rows. The named templates use their family's
special tokens, and are refused where the tokenizer does not have those as single tokens: as
several ordinary tokens the turn markers would cost more and end no answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunekit.atomic import is_there
from tunekit.errors import ConfigError


@dataclass(frozen=True)
class Named:
    jinja: str
    markers: tuple[str, ...]  # special tokens the template writes, which must be tokens of the vocabulary
    end_of_turn: str | None  # the token that ends an answer (becomes the tokenizer's EOS); None: the EOS itself


# Written for tunekit after each family's published format. A system message goes before the
# first user turn where the family has no system role (Gemma, Mistral).
NAMED: dict[str, Named] = {
    "chatml": Named(
        r"{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}",
        ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": Named(
        r"{%- for m in messages -%}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
        r"{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "gemma": Named(
        r"{%- for m in messages -%}{%- set after_system = loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system' -%}"
        r"{%- if m['role'] == 'system' -%}{{ '<start_of_turn>user\n' + m['content'] + '\n\n' }}"
        r"{%- elif m['role'] == 'user' -%}{{ ('' if after_system else '<start_of_turn>user\n') + m['content'] + '<end_of_turn>\n' }}"
        r"{%- else -%}{{ '<start_of_turn>model\n' + m['content'] + '<end_of_turn>\n' }}{%- endif -%}{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}",
        ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "mistral": Named(
        r"{%- for m in messages -%}{%- set after_system = loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system' -%}"
        r"{%- if m['role'] == 'system' -%}{{ '[INST] ' + m['content'] + '\n\n' }}"
        r"{%- elif m['role'] == 'user' -%}{{ ('' if after_system else '[INST] ') + m['content'] + ' [/INST]' }}"
        r"{%- else -%}{{ m['content'] + eos_token }}{%- endif -%}{%- endfor -%}",
        (), None),
    "phi3": Named(
        r"{%- for m in messages -%}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}",
        ("<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
    "base": Named(
        r"{%- for m in messages -%}{%- if m['role'] == 'system' -%}{{ m['content'] + '\n\n' }}"
        r"{%- elif m['role'] == 'user' -%}{{ '### User:\n' + m['content'] + '\n\n' }}"
        r"{%- else -%}{{ '### Assistant:\n' + m['content'] + eos_token + '\n\n' }}{%- endif -%}{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}",
        (), None),
}
DEFAULT_FOR_BASE = "base"
SETTINGS = ("auto", *NAMED)


def is_path_setting(setting: str) -> bool:
    return setting not in SETTINGS


def resolved_setting(setting: str, has_own: bool) -> str:
    """What `auto` means for a model with (`has_own`) or without a template of its own."""
    return DEFAULT_FOR_BASE if setting == "auto" and not has_own else setting


def apply_template(tokenizer, setting: str = "auto", source: str = "the model") -> str:
    """Give `tokenizer` the chat template `setting` names; returns what it uses, for the log:
    "own", a template name, or the Jinja file's path. Raises ConfigError for what cannot work."""
    if setting == "auto" and tokenizer.chat_template:
        return "own"
    name = resolved_setting(setting, bool(tokenizer.chat_template))
    if name in NAMED:
        named = NAMED[name]
        _check_markers(tokenizer, name, named, source)
        tokenizer.chat_template = named.jinja
        if named.end_of_turn is not None:
            tokenizer.eos_token = named.end_of_turn  # generation stops there; exports record it
        if tokenizer.eos_token is None:
            raise ConfigError(f"model.chat_template {name}: {source}'s tokenizer has no EOS token to end answers with; "
                              f"give a Jinja file (model.chat_template: path/to/template.jinja)")
        return name
    path = Path(setting).expanduser()
    if not is_there(path):
        raise ConfigError(f"model.chat_template {setting!r} is neither one of {', '.join(SETTINGS)} nor a Jinja file")
    try:
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the chat template {path}: {e}") from None
    return str(path)


def _check_markers(tokenizer, name: str, named: Named, source: str) -> None:
    vocab = tokenizer.get_vocab()
    missing = [m for m in named.markers if m not in vocab]
    if missing:
        raise ConfigError(
            f"model.chat_template {name} writes {', '.join(missing)}, which {source}'s tokenizer does not have as tokens: "
            f"they would be spelled out in pieces and no answer would end. Use model.chat_template: {DEFAULT_FOR_BASE} "
            f"(plain text with the tokens the model has), the model's own (auto), or a Jinja file")
