"""What trains: full fine-tuning or LoRA / DoRA / rsLoRA (through PEFT), on all blocks or chosen ones.

Restricting training to the last K blocks is also the cheapest speed-up on a CPU:
no gradient flows below the lowest trainable block, so backward skips those blocks.

Many small models (SmolLM2 among them) tie the output layer to the input embeddings:
one matrix serves both, so training the LM head trains the embeddings too and the
other way round. Both paths below keep the tie rather than silently breaking it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError

LORA_KINDS = ("lora", "dora", "rslora")
# Where a parameter or module name says which transformer block it belongs to.
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class TrainableSummary:
    """What an applied method trains, for the console and the run's records."""

    trainable: int
    total: int
    layers: list[int]
    """Blocks in which something trains."""
    kind: str = "full"
    modules: list[str] = field(default_factory=list)
    """Inside the blocks: LoRA's adapted modules, or for full the trained modules when not all are."""
    extras: list[str] = field(default_factory=list)
    """Trained parts outside the blocks: embeddings, LM head, final norm, or parameter names."""
    tied: bool = False
    """The model ties its LM head to the input embeddings (one matrix)."""
    detail: str = ""

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)

    def describe(self) -> str:
        parts = [f"{self.trainable:,} trainable of {self.total:,} parameters ({self.share:.2%})"]
        what = f"{self.detail} " if self.detail else ""
        if self.modules:
            what += f"on {', '.join(self.modules)} "
        parts.append(f"{what}in blocks {_ranges(self.layers)}" if self.layers else f"{what}in no block")
        if self.extras:
            parts.append("also " + ", ".join(self.extras))
        if self.tied and any(e in ("embeddings", "LM head") for e in self.extras):
            parts.append("LM head and embeddings are tied (one matrix): training either trains both")
        return "; ".join(parts)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ",".join(out)


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def block_of(name: str) -> int | None:
    """The transformer block a parameter or module name belongs to, or None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def is_tied(model) -> bool:
    """Whether the output layer's weight is the input embeddings' weight (one tensor)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def select_layers(spec: str | None, n: int) -> list[int]:
    """Block indices for "last:K", "A-B" or None (all)."""
    if spec is None:
        return list(range(n))
    if spec.startswith("last:"):
        k = int(spec.split(":", 1)[1])
        if not 0 < k <= n:
            raise ConfigError(f"method.layers: last:{k} is out of range; the model has {n} blocks")
        return list(range(n - k, n))
    a, b = (int(x) for x in spec.split("-"))
    if not 0 <= a <= b < n:
        raise ConfigError(f"method.layers: {spec} is out of range; the model has blocks 0-{n - 1}")
    return list(range(a, b + 1))


def linear_module_names(model) -> list[str]:
    """Short names of the linear layers inside the transformer blocks (all-linear)."""
    return sorted({full.rsplit(".", 1)[-1] for full, mod in model.named_modules()
                   if isinstance(mod, torch.nn.Linear) and block_of(full) is not None})


def _adaptable_modules(model) -> list[str]:
    """Full names of the modules LoRA can wrap here (linear layers and embeddings)."""
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]


def _module_name(model, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _no_match(what: str, model) -> ConfigError:
    example = next((n for n in _adaptable_modules(model) if block_of(n) is not None), "")
    return ConfigError(
        f"method.target_modules: {what}; the model's linear layers are {linear_module_names(model)} "
        f"(full names look like '{example}'). Use all-linear, a list of names, or one regex matched "
        "against whole full names (e.g. '.*\\.(q_proj|v_proj)')"
    )


def lora_targets(model, target: str | list[str], layers: list[int]) -> tuple[str | list[str], list[str]]:
    """(target_modules to hand PEFT, full names of the modules it will adapt), with PEFT's matching rules.

    A list names modules by their last name parts (`q_proj`, `self_attn.q_proj`); a string
    other than all-linear is a regex that must match a module's whole full name. PEFT
    ignores `layers_to_transform` for a regex, so with a layer choice the regex is
    resolved here into the list of full names it matches inside the chosen blocks.
    """
    names = _adaptable_modules(model)
    chosen = set(layers)

    def in_layers(n: str) -> bool:
        return len(chosen) == num_layers(model) or block_of(n) in chosen

    if target == "all-linear":
        # PEFT's own all-linear would work too; naming the layers keeps adapter_config.json
        # readable and lets layers_to_transform apply.
        short = linear_module_names(model)
        return short, [n for n in names if n.rsplit(".", 1)[-1] in short and block_of(n) is not None and in_layers(n)]
    if isinstance(target, list):
        unknown = [t for t in target if not any(n == t or n.endswith("." + t) for n in names)]
        if unknown:
            raise _no_match(f"{unknown} not found in the model", model)
        hits = [n for n in names if any(n == t or n.endswith("." + t) for t in target)]
        # PEFT drops modules outside the blocks (no index) once layers_to_transform is set.
        hits = hits if len(chosen) == num_layers(model) else [n for n in hits if block_of(n) in chosen]
        if not hits:
            raise _no_match(f"{target} matches nothing in blocks {_ranges(layers)}", model)
        return list(target), hits
    try:
        pattern = re.compile(target)
    except re.error as e:
        raise ConfigError(f"method.target_modules: '{target}' is not a valid regex ({e})") from None
    hits = [n for n in names if pattern.fullmatch(n) and in_layers(n)]
    if not hits:
        hint = f" (for the module named {target} write [{target}])" if target in linear_module_names(model) else ""
        raise _no_match(f"the regex '{target}' matches no full module name in blocks {_ranges(layers)}{hint}", model)
    return (target if len(chosen) == num_layers(model) else hits), hits


def _apply_lora(model, method: MethodConfig, layers: list[int]):
    from peft import LoraConfig, get_peft_model

    tied = is_tied(model)
    embed = _module_name(model, model.get_input_embeddings()).rsplit(".", 1)[-1]
    head_mod = model.get_output_embeddings()
    head = _module_name(model, head_mod).rsplit(".", 1)[-1] if head_mod is not None else None
    save: list[str] = []
    if method.train_embeddings or (tied and method.train_lm_head):
        save.append(embed)  # with a tie PEFT ties the head's copy to this one (ensure_weight_tying)
    if method.train_lm_head and not tied:
        if head is None:
            raise ConfigError("method.train_lm_head: this model has no output layer to train")
        save.append(head)
    targets, hits = lora_targets(model, method.target_modules, layers)
    # PEFT never adapts a module it trains whole (nor, with a tie, the head tied to it).
    whole = set(save) | ({head} if tied and save else set())
    hits = [h for h in hits if h.rsplit(".", 1)[-1] not in whole]
    all_layers = len(layers) == num_layers(model)
    lcfg = LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=targets,
        layers_to_transform=None if all_layers or isinstance(targets, str) else layers,
        use_dora=method.kind == "dora",
        use_rslora=method.kind == "rslora",
        modules_to_save=save or None,
        # Keeps a tied head tied to the trained embedding copy, in memory, in the saved
        # adapter and after merging; without it PEFT would train two diverging copies.
        ensure_weight_tying=tied and bool(save),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lcfg)
    adapted = sorted({n.split(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n})
    assert len(adapted) == len(hits), (adapted, hits)  # our matching must agree with PEFT's
    extras = (["embeddings"] if embed in save else []) + (["LM head"] if method.train_lm_head or (tied and save) else [])
    name = {"lora": "LoRA", "dora": "DoRA", "rslora": "rsLoRA"}[method.kind]
    scale = f"alpha/sqrt(r)={method.alpha / method.r ** 0.5:g}" if method.kind == "rslora" else f"alpha/r={method.alpha / method.r:g}"
    detail = f"{name} r={method.r} alpha={method.alpha:g} (scale {scale})"
    modules = sorted({h.rsplit(".", 1)[-1] for h in hits})
    return model, modules, extras, detail


def _full_choice(model, method: MethodConfig, layers: list[int]) -> set[str]:
    """Names (every alias of a tied tensor included) of the parameters full fine-tuning trains."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    if method.parameters:
        chosen: set[str] = set()
        for pat in method.parameters:
            try:
                hits = {n for n in names if re.search(pat, n)}
            except re.error as e:
                raise ConfigError(f"method.parameters: '{pat}' is not a valid regex ({e})") from None
            if not hits:
                raise ConfigError(f"method.parameters: '{pat}' matches no parameter name (searched anywhere in the "
                                  f"name); names look like {names[:2] + names[-2:]}")
            chosen |= hits
    elif method.layers is None:
        return set(names)  # no choice at all: everything trains, final norm included
    else:
        chosen = {n for n in names if block_of(n) in set(layers)}
    if method.train_embeddings:
        chosen |= {n for n, p in model.named_parameters(remove_duplicate=False) if p is model.get_input_embeddings().weight}
    head = model.get_output_embeddings()
    if method.train_lm_head and head is not None:
        chosen |= {n for n, p in model.named_parameters(remove_duplicate=False) if p is head.weight}
    return chosen


def _apply_full(model, method: MethodConfig, layers: list[int]):
    chosen = _full_choice(model, method, layers)
    params = dict(model.named_parameters(remove_duplicate=False))
    train_ids = {id(params[n]) for n in chosen}  # a tied tensor trains if any of its names is chosen
    for p in model.parameters():
        p.requires_grad = id(p) in train_ids
    trained = [n for n, p in params.items() if id(p) in train_ids]
    embed_w = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    extras = (["embeddings"] if embed_w.requires_grad else []) + (["LM head"] if head is not None and head.weight.requires_grad else [])
    special = {id(embed_w)} | ({id(head.weight)} if head is not None else set())
    for n in trained:
        if block_of(n) is None and id(params[n]) not in special:
            extras.append(n.removesuffix(".weight"))
    in_blocks = {_BLOCK.split(n)[-1].removesuffix(".weight").removesuffix(".bias") for n in trained if block_of(n) is not None}
    every = {_BLOCK.split(n)[-1].removesuffix(".weight").removesuffix(".bias") for n in params if block_of(n) is not None}
    modules = sorted(in_blocks) if in_blocks != every else []
    return model, modules, extras, "full weights"


def apply_method(model, method: MethodConfig):
    """Freeze/wrap `model` for the chosen method; returns (model to train, summary)."""
    n = num_layers(model)
    layers = select_layers(method.layers, n)
    tied = is_tied(model)
    if method.kind in LORA_KINDS:
        model, modules, extras, detail = _apply_lora(model, method, layers)
    else:
        model, modules, extras, detail = _apply_full(model, method, layers)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    blocks = sorted({b for name, _ in trained if (b := block_of(name)) is not None})
    trainable = sum(p.numel() for _, p in trained)
    total = sum(p.numel() for p in model.parameters())
    return model, TrainableSummary(trainable, total, blocks, method.kind, modules, extras, tied, detail)
