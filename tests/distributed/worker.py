"""Under torchrun: `worker.py CONFIG RUNS,STRATEGY,SYNC[,OVERRIDE...] ...` trains the prepared run
folder RUNS/<name> once per argument, with train.distributed=STRATEGY, SYNC "skip" (gradients
synchronised on a step's last micro-batch only, the default) or "every" (on every micro-batch),
and the config overrides given (key=value).

One launch for several trainings: each process pays its imports and the process group once.
The trainings go through pipeline.run_stage, as `tunekit train` runs them under torchrun.
"""

from __future__ import annotations

import sys

from tunekit import hardware, pipeline
from tunekit.config import load_config
from tunekit.progress import console
from tunekit.train import distributed


def main(config: str, jobs: list[str]) -> None:
    hardware.join_process_group()
    console.quiet = not hardware.is_main()
    for job in jobs:
        runs, strategy, sync, *overrides = job.split(",")
        distributed.SKIP_SYNC = sync == "skip"
        cfg = load_config(config, [f"train.distributed={strategy}", *overrides])
        pipeline.run_stage(cfg, pipeline.run_dir_for(cfg, runs), "train")
    hardware.leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
