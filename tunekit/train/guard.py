"""Watching for a non-finite loss or gradient norm without a host sync at every step.

On a GPU, reading a loss to the CPU (`float(loss)`) waits for every queued kernel, so a loop
that checks each step runs the device in lockstep with Python. The watch keeps, on the device,
the first step at which the loss or the gradient norm stopped being finite, and the value; the
loop reads it (one sync) only where it logs, evaluates or saves, and a non-finite step never
reaches the weights: the fused optimiser skips the update itself (`skip_if_nonfinite`).
"""

from __future__ import annotations

import torch

WHAT = ("loss", "gradient norm")


class NonFiniteWatch:
    def __init__(self, device: torch.device, watch_grad: bool = True):
        # With a gradient scaler (fp16) an infinite gradient is an overflow the scaler handles by
        # skipping the step and lowering the scale, not a divergence: only the loss is watched then.
        self.watch_grad = watch_grad
        self.first = torch.zeros(2, dtype=torch.long, device=device)  # step of the first non-finite value; 0: none
        self.value = torch.zeros(2, dtype=torch.float32, device=device)

    def record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        values = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        bad = ~torch.isfinite(values)
        if not self.watch_grad:
            bad[1] = False
        new = bad & (self.first == 0)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.value = torch.where(new, values, self.value)

    def first_bad(self) -> tuple[str, float, int] | None:
        """(what, value, step) of the earliest non-finite value seen, or None; reading it syncs."""
        steps = self.first.tolist()
        seen = [(s, i) for i, s in enumerate(steps) if s]
        if not seen:
            return None
        step, i = min(seen)
        return WHAT[i], float(self.value[i]), step


def skip_if_nonfinite(optimizer, finite: torch.Tensor) -> bool:
    """Make the optimiser's next step a no-op unless `finite` (a 0-d bool tensor) holds, without a
    host sync: torch's fused AdamW reads `found_inf` on the device, as it does for a GradScaler.
    Returns False for optimisers that cannot (the caller then checks on the host)."""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    optimizer.found_inf = (~finite).float()
    return True
