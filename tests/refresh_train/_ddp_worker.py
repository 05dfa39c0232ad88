"""One rank of the data-parallel tests, started by torchrun from ``test_distributed.py``.

``python _ddp_worker.py SPEC.json OUT/``: SPEC is a list of ``[name, argv]``;
each argv (``refresh-train`` flags) is trained in turn in one process group,
and each rank writes ``OUT/name.rank{r}.json`` (its records and its own
cache counters of the last epoch); rank 0 also writes ``OUT/name.pt`` (the
trained weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed

from refresh_train.cli import config_from_args
from refresh_train.distributed import DistContext, check_config, init_process_group
from refresh_train.trainer import Trainer


def main(spec_path: str, out_dir: str) -> None:
    ctx = DistContext.from_env()
    assert ctx is not None, "run me with torchrun"
    out = Path(out_dir)
    spec = json.loads(Path(spec_path).read_text())
    init_process_group(ctx, "cpu")
    try:
        for name, argv in spec:
            config = check_config(config_from_args(argv), ctx)
            with Trainer(config, dist=ctx) as trainer:
                records = trainer.run()
                local = trainer.cache.stats()
                state = trainer.model.state_dict()
            text = json.dumps({"records": records, "local": local})
            (out / f"{name}.rank{ctx.rank}.json").write_text(text)
            if ctx.is_main:
                torch.save(state, out / f"{name}.pt")
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
