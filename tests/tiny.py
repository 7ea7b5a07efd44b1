"""A tiny chat model built in-process: 2-layer Llama and a byte-level BPE tokenizer with
SmolLM2's ChatML template. Random weights; enough to exercise every stage in seconds."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "How much does the Crest plan cost per seat? The Crest plan costs $43 per seat per month.",
    "Where do I rotate an API key? Go to Settings > Security > API keys and click Rotate.",
    "What does error RW-4031 mean? It means the webhook signature did not match.",
    "You are a helpful assistant. Hello! Thanks, that helps a lot. What is the refund window?",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, layers: int = 2, seed: int = 0, tied: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def save_tiny(path: Path, layers: int = 2, tied: bool = True) -> Path:
    """The tiny model and tokenizer as a plain HF folder; `tied`: the LM head shares the embeddings (as SmolLM2's does)."""
    tok = build_tokenizer()
    model = build_model(len(tok), layers, tied=tied)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def template_tokenizer(template: str, special: list[str], *, bos: str | None, eos: str, add_bos: bool = False):
    """The tiny tokenizer dressed as another model family: its special tokens, BOS/EOS and
    chat template; with `add_bos`, BOS goes before every text encoded with special tokens,
    as Llama 3's tokenizer does."""
    from tokenizers import processors

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": special})
    tok.bos_token, tok.eos_token, tok.pad_token = bos, eos, eos
    if add_bos:
        bos_id = tok.convert_tokens_to_ids(bos)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    tok.chat_template = template
    return tok
