"""The tokenizer half of a GGUF file: vocabulary, merges, special ids and chat template.

A GGUF carries no tokenizer.json; llama.cpp (and transformers' GGUF reader) rebuild the
tokenizer from these keys, so they must reproduce the HF tokenizer's ids exactly. The HF
tokenizer is the source of truth: we ask it (not hand-parsed config files) which tokens are
special and whether it adds BOS/EOS. gguf's SpecialVocab guesses the latter from the
post-processor's shape; asking the tokenizer cannot be wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import gguf

from tunekit.errors import CheckpointError, ModelError

# llama.cpp names the pre-tokenizer of a byte-level BPE vocabulary by the sha256 of the ids a
# tokenizer gives this text (convert_hf_to_gguf.py, get_vocab_base_pre); we reuse the text and the
# hashes of the families tunekit meets, so a known tokenizer gets the exact name llama.cpp's own
# converter would write.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM*
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}
SUPPORTED_PRE = ("gpt-2", "smollm", "qwen2")  # recognised from the pre-tokenizer's structure


@dataclass
class TokenizerMeta:
    tokens: list[str]
    toktypes: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | list[dict] | None = None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.toktypes)
        writer.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def tokenizer_meta(model_dir: Path, vocab_size: int) -> TokenizerMeta:
    """Read the HF tokenizer in `model_dir` into GGUF terms, the vocabulary padded to `vocab_size` rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    backend = getattr(tok, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    _require_byte_level_bpe(model_dir, spec)
    tokens, toktypes = _vocab(tok, vocab_size, model_dir)
    probe = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    specials = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}
    return TokenizerMeta(
        tokens=tokens, toktypes=toktypes, merges=_merges(spec["model"]["merges"]),
        pre=_pre_name(tok, spec.get("pre_tokenizer"), model_dir),
        special_ids={k: v for k, v in specials.items() if v is not None},
        add_bos=len(probe) > len(bare) and probe[0] == tok.bos_token_id and probe[1 : 1 + len(bare)] == bare,
        add_eos=len(probe) > len(bare) and probe[-1] == tok.eos_token_id and probe[-1 - len(bare) : -1] == bare,
        chat_template=_chat_template(tok.chat_template),
    )


def _require_byte_level_bpe(model_dir: Path, spec: dict) -> None:
    kind = spec.get("model", {}).get("type", "no tokenizer.json")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and "ByteLevel" in json.dumps(spec.get("decoder"))
    if kind != "BPE" or not byte_level:
        what = f"a {kind} model" + ("" if kind != "BPE" else " without byte-level pre-tokenizer/decoder")
        raise CheckpointError(
            f"{model_dir}: the tokenizer is {what}; GGUF export supports byte-level BPE tokenizers only "
            "(GPT-2 style, as SmolLM2, Qwen2 and Llama 3 use; tokenizer.ggml.model 'gpt2'), not SentencePiece, "
            "Unigram or WordPiece. Export the merged folder instead and convert it with llama.cpp's convert_hf_to_gguf.py."
        )


def _vocab(tok, vocab_size: int, model_dir: Path) -> tuple[list[str], list[int]]:
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # rows the model has beyond the tokenizer (Qwen2 pads to a multiple of 128)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            # CONTROL tokens are matched whole and never printed by llama.cpp; transformers' reader
            # turns them back into special tokens. Non-special added tokens stay matched whole.
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _merges(raw: list) -> list[str]:
    if raw and isinstance(raw[0], str):
        return list(raw)
    # tokenizers >= 0.20 stores pairs; GGUF keeps llama.cpp's "left right" strings. A literal space
    # cannot occur in a byte-level token (the byte is spelled 'Ġ'), so splitting on it stays unambiguous.
    return [f"{a} {b}" for a, b in raw]


def _pre_name(tok, pre_tokenizer: dict | None, model_dir: Path) -> str:
    """llama.cpp never reads tokenizer.json: it splits text before BPE with a regex built into it,
    chosen by tokenizer.ggml.pre. A missing or unknown name makes llama.cpp fall back to (or refuse
    with) another split, so the model gets token sequences it was not trained on."""
    chkhsh = sha256(str(tok.encode(_CHKTXT)).encode()).hexdigest()
    if chkhsh in _KNOWN_PRE:
        return _KNOWN_PRE[chkhsh]
    name = _structural_pre(pre_tokenizer)
    if name is None:
        raise CheckpointError(
            f"{model_dir}: the tokenizer's pre-tokenizer ({json.dumps(pre_tokenizer)[:200]}) matches none that "
            f"llama.cpp names; GGUF export knows {', '.join(SUPPORTED_PRE)} and the released tokenizers of "
            f"{', '.join(sorted(set(_KNOWN_PRE.values())))}."
        )
    return name


def _structural_pre(pre: dict | None) -> str | None:
    """The llama.cpp pre-tokenizer with the same split, for tokenizers no release hash covers (retrained ones)."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2's split after cutting digits apart
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        if steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT:
            return "qwen2"
    return None


def _chat_template(template) -> str | list[dict] | None:
    if isinstance(template, dict):  # several named templates: GGUF stores them as a list
        return [{"name": k, "template": v} for k, v in template.items()]
    return template
