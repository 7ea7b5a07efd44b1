"""The held-out loss over a run: the best so far, and when to stop because it stopped improving.

Its state goes into every checkpoint, so a resumed run keeps counting where it left off
instead of forgetting the best it had seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class HeldOut:
    patience: int = 0  # evaluations without a new best before stopping; 0: never stop early
    best_step: int | None = None
    best_loss: float | None = None
    since_best: int = 0
    stopped_early: bool = False

    def record(self, step: int, loss: float) -> bool:
        """Note the held-out loss measured after `step`; True when it is a new best."""
        if self.best_loss is None or loss < self.best_loss:
            self.best_step, self.best_loss, self.since_best = step, loss, 0
            return True
        self.since_best += 1
        self.stopped_early = self.patience > 0 and self.since_best >= self.patience
        return False

    def why_stopped(self) -> str:
        return (f"the held-out loss has not improved for {self.since_best} evaluations "
                f"(best {self.best_loss:.4f} at step {self.best_step})")

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "patience"}

    @classmethod
    def from_state(cls, state: dict | None, patience: int) -> "HeldOut":
        return cls(patience=patience, **(state or {}))
