"""How the next token is chosen: greedy (the default, what eval scores) or sampled with a
temperature and top-p, through transformers' logits warpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunekit.errors import ConfigError


def check_sizes(max_new_tokens: int, batch_size: int = 1) -> None:
    """ConfigError unless --max-new-tokens and --batch-size are at least 1."""
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} is {value}; give at least 1")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def check(self) -> Sampling:
        check_sizes(self.max_new_tokens)
        if self.temperature < 0:
            raise ConfigError(f"--temperature is {self.temperature}; use 0 for greedy or a positive value to sample")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p is {self.top_p}; it must be in (0, 1] (1 keeps every token)")
        return self

    def describe(self) -> str:
        if self.temperature == 0:
            return "greedy"
        return f"sampling (temperature {self.temperature:g}" + (f", top-p {self.top_p:g})" if self.top_p < 1 else ")")


def sampler(temperature: float, top_p: float = 1.0,
            generator: torch.Generator | None = None) -> Callable[[torch.Tensor], int] | None:
    """fp32 logits of one row -> a sampled token; None at temperature 0 (greedy: the decode loop's argmax).
    `generator`: the row's own random stream (a request's seed); None draws from torch's default one,
    which `tunekit chat --seed` seeds."""
    if temperature == 0:
        return None
    from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warp = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                               + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    no_ids = torch.empty((1, 0), dtype=torch.long)  # the warpers take (ids, scores); these two ignore the ids

    def pick(logits: torch.Tensor) -> int:
        probs = torch.softmax(warp(no_ids, logits[None]), dim=-1)  # the warpers take a batch
        return int(torch.multinomial(probs[0], 1, generator=generator))

    return pick
