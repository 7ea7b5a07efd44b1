"""GGUF export: the merged HF folder as one file that llama.cpp, Ollama and LM Studio run.

Written with the `gguf` package (llama.cpp's own writer, tensor-name map and quantizers), following
what llama.cpp's convert_hf_to_gguf.py does for these architectures, and verified by loading the
file back with transformers' GGUF reader and comparing logits and tokenization with the HF folder.
Tensors stream one at a time from the safetensors files to the GGUF, so memory stays at about one
fp32 tensor beyond the file's header.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from tunekit import atomic
from tunekit.data.template import prompt_ids
from tunekit.errors import CheckpointError, ConfigError, ModelError
from tunekit.export.gguf_meta import tokenizer_meta
from tunekit.hardware import pick_device
from tunekit.progress import Bar

GGUF_TYPES = ("f16", "bf16", "q8_0")
SUPPORTED_ARCHS = {"llama": "llama", "qwen2": "qwen2"}  # HF model_type -> GGUF general.architecture

# llama.cpp's llama graph rotates adjacent pairs of a head's dims (GPT-J RoPE) while HF Llama
# rotates the two halves (NeoX); its converter permutes Q/K rows to match, and transformers'
# reader undoes it. Qwen2 runs NeoX RoPE in llama.cpp too, so its rows stay as they are.
_PERMUTE_QK = {"llama"}

_GGML = gguf.GGMLQuantizationType
_FILE_TYPE = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_WEIGHT_TYPE = {"f16": _GGML.F16, "bf16": _GGML.BF16, "q8_0": _GGML.Q8_0}

# verify_gguf passes when max|logit gap| <= atol + rtol * max|reference logit| on the probe; relative,
# because a tiny random model's logits are ~1 and a real one's ~40. Measured on the probe (49 tokens):
#   SmolLM2-135M-Instruct, logits up to 37.7: gap f16 0.041 (0.11%), bf16 0.29 (0.77%), q8_0 1.38 (3.7%,
#     argmax agreement 96%); greedy continuation identical for all three. Without the Q/K permutation: 34.8 (92%).
#   tiny Llama (init std 0.1, logits up to 2.6): f16 0.0023, q8_0 0.057; without the permutation 1.04 (40%).
# q8_0 is ~4x bf16 because its per-weight error is (rms 0.55% against bf16's 0.14%); each rtol is
# 3-5x the real model's figure and still far below what a wrong file gives.
TOLERANCES = {"f16": (1e-3, 5e-3), "bf16": (1e-2, 3e-2), "q8_0": (1e-2, 1e-1)}
GREEDY_TOKENS = 8
_PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How much does the Crest plan cost per seat? I need 12 seats from 2025-03-01."},
]


@dataclass
class _Tensor:
    file: Path
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * self.shape[-1] // block * size


def write_gguf(model_dir: Path, out_file: Path, qtype: str = "f16") -> dict:
    """Write the HF folder `model_dir` as one GGUF file `out_file` (atomically) in `qtype`; returns a summary."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    if qtype not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {qtype!r} is not one of {', '.join(GGUF_TYPES)}")
    cfg = _load_config(model_dir)
    arch = SUPPORTED_ARCHS[cfg.model_type]
    meta = tokenizer_meta(model_dir, cfg.vocab_size)
    plan = _plan_tensors(model_dir, cfg, arch, qtype)

    writer = gguf.GGUFWriter(None, arch)
    _add_hparams(writer, cfg, out_file.stem, qtype)
    meta.add_to(writer)
    for t in plan:
        # the logical shape with a non-uint8 dtype: the writer takes it as is and reverses it to ggml order
        writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
    with atomic.temp_path(out_file) as tmp:  # GGUFWriter opens its output by name
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with Bar(f"gguf {qtype}", len(plan)) as bar:
                for data in _converted(plan, cfg, arch):
                    writer.write_tensor_data(data)
                    bar.update()
        finally:
            writer.close()  # also on a failed conversion: the temporary file is deleted, its handle must go too
    fallback = [t.gguf_name for t in plan if qtype == "q8_0" and t.ggml_type == _GGML.F16]
    return {
        "file": str(out_file), "architecture": arch, "qtype": qtype, "tensors": len(plan),
        "bytes": out_file.stat().st_size, "vocab_size": len(meta.tokens), "pre_tokenizer": meta.pre,
        "chat_template": meta.chat_template is not None, "tied_embeddings": bool(cfg.tie_word_embeddings),
        "bos_id": meta.special_ids.get("bos"), "eos_id": meta.special_ids.get("eos"),
        "add_bos": meta.add_bos, "f16_fallback": fallback,  # q8_0 needs rows in blocks of 32 values
    }


def _load_config(model_dir: Path):
    """The model's config, refused before anything is written unless GGUF export knows the architecture."""
    from transformers import AutoConfig

    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelError(f"{path} not found; GGUF export needs a plain Hugging Face model folder")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type not in SUPPORTED_ARCHS:
        raise ModelError(
            f"{path}: model_type {model_type!r} cannot be exported to GGUF; supported: {', '.join(SUPPORTED_ARCHS)}. "
            "Export format 'merged' and convert it with llama.cpp's convert_hf_to_gguf.py instead."
        )
    cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    unsupported = {
        f"rope_type {rope!r}": rope != "default",  # scaled RoPE needs keys transformers' reader ignores
        "mlp_bias": getattr(cfg, "mlp_bias", False),  # llama.cpp's llama graph has no FFN biases
        "use_sliding_window": getattr(cfg, "use_sliding_window", False),
    }
    if bad := [k for k, v in unsupported.items() if v]:
        raise ModelError(f"{path}: GGUF export does not support {', '.join(bad)}; export format 'merged' instead")
    return cfg


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _add_hparams(w: gguf.GGUFWriter, cfg, name: str, qtype: str) -> None:
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(_head_dim(cfg))
    if _head_dim(cfg) != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(_head_dim(cfg))  # llama.cpp assumes hidden/heads otherwise
        w.add_value_length(_head_dim(cfg))
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(_FILE_TYPE[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _plan_tensors(model_dir: Path, cfg, arch: str, qtype: str) -> list[_Tensor]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir} holds no *.safetensors weights")
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, cfg.num_hidden_layers)
    plan = []
    for file in files:
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():
                if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # tied: llama.cpp reuses token_embd, and transformers ties when output.weight is absent
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ModelError(f"{file}: tensor {hf_name} has no place in a GGUF {arch} model")
                shape = tuple(f.get_slice(hf_name).get_shape())
                plan.append(_Tensor(file, hf_name, gguf_name, shape, _tensor_type(shape, qtype)))
    have = {t.gguf_name for t in plan}
    needed = {"token_embd.weight", "output_norm.weight"} | (set() if cfg.tie_word_embeddings else {"output.weight"})
    if missing := sorted(needed - have):
        raise ModelError(f"{model_dir}: the weights lack {', '.join(missing)} (config tie_word_embeddings={cfg.tie_word_embeddings})")
    return plan


def _tensor_type(shape: tuple[int, ...], qtype: str) -> gguf.GGMLQuantizationType:
    if len(shape) < 2:
        return _GGML.F32  # norms and biases: tiny, and llama.cpp keeps them F32 for accuracy
    if qtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[_GGML.Q8_0][0] != 0:
        return _GGML.F16
    return _WEIGHT_TYPE[qtype]


def _converted(plan: list[_Tensor], cfg, arch: str) -> Iterator[np.ndarray]:
    from safetensors import safe_open

    for file in dict.fromkeys(t.file for t in plan):
        with safe_open(file, framework="pt") as f:
            for t in (t for t in plan if t.file == file):
                data = f.get_tensor(t.hf_name).to(torch.float32)
                if arch in _PERMUTE_QK and (".attn_q." in t.gguf_name or ".attn_k." in t.gguf_name):
                    heads = cfg.num_attention_heads if ".attn_q." in t.gguf_name else cfg.num_key_value_heads
                    data = _permute_rope_rows(data, heads)
                yield gguf.quants.quantize(data.numpy(), t.ggml_type)
                del data


def _permute_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Per head, interleave the first and second half of its rows: row i of each half -> rows 2i, 2i+1."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def verify_gguf(gguf_file: Path, model_dir: Path, qtype: str, also: Callable | None = None) -> dict:
    """Load `gguf_file` with transformers and compare it with the HF model in `model_dir` on a probe
    conversation: logits (within the qtype's tolerance), argmax agreement, greedy continuation, and the
    tokenizer's ids and chat template. Raises CheckpointError when they differ; returns the figures.

    `also(model) -> dict`: more checks on the loaded GGUF model, merged into the figures (loading it
    takes ~20 s for 135M parameters, so it is loaded once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if qtype not in TOLERANCES:
        raise ConfigError(f"GGUF type {qtype!r} is not one of {', '.join(GGUF_TYPES)}")
    gguf_file, model_dir = Path(gguf_file), Path(model_dir)
    hf_tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = hf_tok.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    ids = prompt_ids(hf_tok, _PROBE)  # as training and eval build prompts: one BOS, never two
    # one model in memory at a time: the reference's logits, then the file's
    ref, ref_cont = _probe(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
                           .to(pick_device()), ids)
    with _alone(gguf_file) as folder:
        gg_tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file.name)
        _check_tokenizer(hf_tok, gg_tok, text, gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file.name, dtype=torch.float32).to(pick_device())
        got, got_cont = _probe(model, ids)
        extra = also(model) if also is not None else {}
        del model
    atol, rtol = TOLERANCES[qtype]
    scale = float(ref.abs().max())
    figures = {
        "qtype": qtype, "probe_tokens": len(ids), "max_logit_gap": float((ref - got).abs().max()),
        "mean_logit_gap": float((ref - got).abs().mean()),
        "tolerance": atol + rtol * scale, "logit_scale": scale,
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        "greedy_reference": ref_cont, "greedy_gguf": got_cont, "greedy_equal": ref_cont == got_cont, **extra,
    }
    if figures["max_logit_gap"] > figures["tolerance"]:
        raise CheckpointError(
            f"{gguf_file}: its logits differ from {model_dir}'s by up to {figures['max_logit_gap']:.4g} on the probe "
            f"conversation, over the {qtype} tolerance of {figures['tolerance']:.4g} (argmax agrees on "
            f"{figures['argmax_agreement']:.0%} of positions); the file is not the model, do not ship it"
        )
    return figures


@contextlib.contextmanager
def _alone(gguf_file: Path) -> Iterator[Path]:
    """A folder holding only (a link to) the file: beside HF files, transformers' GGUF loaders mix in
    the folder's tokenizer_config.json (the GGUF's chat template then goes missing), and the check
    must see what llama.cpp sees, the GGUF alone."""
    from transformers import modeling_gguf_pytorch_utils as reader

    # transformers' GGUF reader draws a tqdm bar of its own, which neither its logging switches nor
    # TQDM_DISABLE (read at import) turn off; tunekit's messages say what is running.
    bar = reader.tqdm
    reader.tqdm = lambda items, **_: items
    try:
        with tempfile.TemporaryDirectory(prefix="tunekit-gguf-") as tmp:
            (Path(tmp) / gguf_file.name).symlink_to(gguf_file.resolve())
            yield Path(tmp)
    finally:
        reader.tqdm = bar


def _check_tokenizer(hf_tok, gg_tok, text: str, gguf_file: Path) -> None:
    ids = hf_tok(text)["input_ids"]
    got = gg_tok(text)["input_ids"]
    if got != ids:
        at = next((i for i, (a, b) in enumerate(zip(ids, got, strict=False)) if a != b), min(len(ids), len(got)))
        raise CheckpointError(
            f"{gguf_file}: its tokenizer encodes the probe conversation differently from the model folder's: "
            f"{len(got)} ids vs {len(ids)}, first difference at position {at} ({got[at:at + 3]} vs {ids[at:at + 3]})"
        )
    if gg_tok.chat_template != hf_tok.chat_template:
        raise CheckpointError(f"{gguf_file}: its chat template differs from the model folder's")
    special = {k: (getattr(gg_tok, f"{k}_token_id"), getattr(hf_tok, f"{k}_token_id")) for k in ("bos", "eos")}
    if bad := {k: v for k, v in special.items() if v[0] != v[1]}:
        raise CheckpointError(f"{gguf_file}: special token ids (file, folder) differ: {bad}")


@torch.no_grad()
def _probe(model, ids: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Logits at every probe position, and the greedy continuation from tunekit's decode loop (no
    generation config involved; no stop token, so always GREEDY_TOKENS long)."""
    from tunekit.infer.cache import SharedPrefix
    from tunekit.infer.greedy import greedy_batch

    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0]
    cont = greedy_batch(model, [ids], GREEDY_TOKENS, set(), 0, SharedPrefix([]))[0]
    del model
    return logits.cpu(), cont
