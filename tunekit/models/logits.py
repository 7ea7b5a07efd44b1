"""Logits from a decoder's last hidden states, exactly as the model's own forward makes them.

Training (train/loss.py) and greedy decoding (infer/decode.py) do not call `model.forward`:
they run the decoder, keep the rows they need, and apply the output layer to those rows
only, which is what keeps a 49k-wide vocabulary affordable. But several families do more
in their forward than `lm_head(h)`:

    Gemma 2, 3, 3n, 4    logits = c * tanh(lm_head(h) / c)      c = final_logit_softcapping
    Granite              logits = lm_head(h) / logits_scaling
    Cohere 1 and 2       logits = lm_head(h) * logit_scale
    MiniCPM              logits = lm_head(h / (hidden_size / dim_model_base))

Skipping that would train such a model on another objective, report another loss and
decode other tokens. `output_layer` reproduces these from the config, then checks once per
model that its logits equal the model's own forward on a few tokens. A family that does
something else fails the check, and the caller falls back to `model.forward` (slower,
correct) rather than silently computing the wrong thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative tolerance of the check: both ways run the same operations, so they agree to rounding
# (bf16's is 2^-8, and the forward soft-caps in bf16 where OutputLayer does in fp32); a missed
# soft-cap or scale is off by far more (a cap of 30 moves a logit of 40 by 11).
_CHECK_RTOL = 1e-2
_CHECK_TOKENS = 6


@dataclass(frozen=True)
class Post:
    """What a family does around its output layer (the identity for Llama, Qwen, Mistral, Phi-3)."""

    scale_in: float = 1.0  # hidden states are divided by this before the output layer
    scale_out: float = 1.0  # logits are multiplied by this
    softcap: float | None = None  # logits = softcap * tanh(logits / softcap)

    @property
    def identity(self) -> bool:
        return self.scale_in == 1.0 and self.scale_out == 1.0 and self.softcap is None

    def before(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.scale_in == 1.0 else h / self.scale_in

    def after(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale_out != 1.0:
            logits = logits * self.scale_out
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


@dataclass(frozen=True)
class OutputLayer:
    """hidden states -> logits: the model's output embeddings with its family's `Post` around them."""

    head: torch.nn.Module
    post: Post

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Logits in fp32 (the post-processing too: a soft-cap in bf16 would round what it keeps)."""
        return self.post.after(self.head(self.post.before(h)).float())

    @property
    def plain_linear(self) -> bool:
        """The head is a bare nn.Linear (not LoRA-wrapped): its weight can be used a chunk at a time."""
        return type(self.head) is torch.nn.Linear


def post_from_config(config) -> Post:
    """The post-processing a model's config asks for, by the attribute names the families use."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale_in, scale_out, softcap = 1.0, 1.0, None
    if getattr(text, "final_logit_softcapping", None):
        softcap = float(text.final_logit_softcapping)
    if getattr(text, "logits_scaling", None):
        scale_out /= float(text.logits_scaling)
    if getattr(text, "logit_scale", None) is not None and getattr(text, "model_type", "").startswith("cohere"):
        scale_out *= float(text.logit_scale)
    if getattr(text, "dim_model_base", None) and getattr(text, "model_type", "").startswith("minicpm"):
        scale_in = float(text.hidden_size) / float(text.dim_model_base)
    return Post(scale_in, scale_out, softcap)


def inner_model(model):
    """The transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_layer(model) -> OutputLayer | None:
    """The model's logits as a function of its decoder's last hidden states, or None when tunekit
    cannot reproduce them (then use `model.forward`). Checked against the forward once per model."""
    inner = inner_model(model)
    post = getattr(inner, "_tunekit_post", None)
    if post is None:
        post = _checked_post(model, inner)
        inner._tunekit_post = post  # a plain attribute: not a parameter, never saved
    head = inner.get_output_embeddings()
    return None if post is False or head is None else OutputLayer(head, post)


def _checked_post(model, inner) -> Post | bool:
    """`post_from_config`, if the decoder and it give the forward's logits on a few tokens; else False."""
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False  # virtual tokens are added by the PEFT wrapper's forward, which the decoder would skip
    try:
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if decoder is None or head is None:
        return False
    post = post_from_config(inner.config)
    device = next(inner.parameters()).device
    vocab = int(getattr(inner.config.get_text_config(), "vocab_size", 0) or head.weight.shape[0])
    ids = (torch.arange(_CHECK_TOKENS, device=device) * 7919 + 11) % vocab  # any tokens will do
    modes = [(m, m.training) for m in inner.modules()]
    inner.eval()  # no dropout: both ways must see the same weights
    try:  # under the caller's autocast, if any: a training step's mixed dtypes need it
        with torch.no_grad():
            own = inner(input_ids=ids[None], use_cache=False).logits.float()
            ours = OutputLayer(head, post)(decoder(input_ids=ids[None], use_cache=False).last_hidden_state)
    except Exception:  # a forward that needs more than token ids (a vision tower's inputs): use the forward
        return False
    finally:
        for m, training in modes:
            m.training = training
    scale = own.abs().max().clamp(min=1.0)
    return post if bool(((own - ours).abs().max() / scale) <= _CHECK_RTOL) else False

