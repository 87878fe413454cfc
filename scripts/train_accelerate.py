#!/usr/bin/env python
"""Train and evaluate an attention RNN translation model with an explicit Accelerate loop.

Same data, model, metrics and output directory as `scripts/train.py`; the loop lives in
`modeling_s2s/accelerate_loop.py`. Launch configs and commands: `configuration/accelerate/README.md`.

    python scripts/train_accelerate.py --model_config configuration/models/small.json --output_dir outputs/acc
    torchrun --nproc_per_node 2 scripts/train_accelerate.py configuration/recipes/quick.yaml --output_dir outputs/q2
    accelerate launch --config_file configuration/accelerate/gpu_ddp.yaml scripts/train_accelerate.py \
        configuration/recipes/quick.yaml --output_dir outputs/quick-ddp
    python scripts/train_accelerate.py ... --checkpointing_steps 500 --resume_from_checkpoint true

All arguments: `python scripts/train_accelerate.py --help`.
"""

import sys

from modeling_s2s.accelerate_loop import main
from modeling_s2s.job import JobError

if __name__ == "__main__":
    try:
        main()
    except JobError as error:  # a bad launch or job (LaunchError included): one clear line per process
        print(f"train_accelerate.py: error: {error}", file=sys.stderr)
        sys.exit(2)
