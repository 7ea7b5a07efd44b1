"""`tunekit plan`: what a run will cost on this machine before it runs, and, with a
learning curve, whether more data of this kind would help.

estimate.py  the arithmetic (step sizes, the fitted time per step, counts), pure functions
probe.py     a few timed steps of the real run and the plan built from them (plan.json)
curve.py     trainings on nested shares of the data, scored, plotted, read in one sentence
"""

from __future__ import annotations

from pathlib import Path

from tunekit.config import Config


def run_plan(cfg: Config, run_dir: Path, curve: bool = False, fractions: list[float] | None = None) -> dict:
    """Prepare (when not done), probe and print the plan; with `curve`, the learning curve after it."""
    from tunekit import pipeline
    from tunekit.models import resolve
    from tunekit.models.loading import load_tokenizer
    from tunekit.plan.estimate import Costs
    from tunekit.plan.probe import describe, probe
    from tunekit.progress import console

    pipeline.run_stage(cfg, run_dir, "prepare")
    pipeline.check_model_limits(cfg)  # run_stage checks only when prepare runs
    path = Path(resolve(cfg.model.base))
    tokenizer = load_tokenizer(path, pipeline.settle_template(cfg).model.chat_template)
    console.rule("[bold]plan")
    plan = probe(cfg, run_dir, path, tokenizer)
    for line in describe(plan):
        console.print(line)
    console.print(f"wrote {run_dir / 'plan' / 'plan.json'}")
    if curve:
        from tunekit.plan.curve import FRACTIONS, learning_curve

        plan["curve"] = learning_curve(cfg, run_dir, path, tokenizer, Costs(**plan["costs"]), fractions or FRACTIONS)
        console.print(f"wrote {run_dir / 'plan' / 'learning_curve.json'} and learning_curve.png")
    return plan
