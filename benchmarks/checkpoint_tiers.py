"""How long a local-tier save blocks the training loop against a persistent one, in one run.

A run of configs/small.py saves to the persistent tier (WORKDIR/checkpoints) every 4 steps and to the local tier
(checkpoint.local_dir, by default a directory under /dev/shm, a RAM disk) on the steps between, both asynchronous.
The loop's `checkpoint_save` and `checkpoint_save_local` events (events.jsonl) give the seconds each save blocked it.

    python benchmarks/checkpoint_tiers.py [--steps=24] [--workdir=DIR] [--local_dir=/dev/shm/llada_tiers]

Prints `checkpoint_tiers: persistent=X s local=Y s per save (median), ratio local/persistent=Z`.
"""
import argparse
import os
import shutil
import tempfile

import numpy as np

from llada_jax import config as config_lib, goodput, train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--workdir", default="")
    p.add_argument("--local_dir", default="/dev/shm/llada_tiers")
    args = p.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="llada_tiers_")
    for d in (workdir, args.local_dir):
        shutil.rmtree(d, ignore_errors=True)
    cfg = config_lib.load_config("configs/small.py")
    cfg.train.steps, cfg.train.log_every = args.steps, 4
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 4, 2
    cfg.checkpoint.local_dir, cfg.checkpoint.local_every_steps = args.local_dir, 2
    train.train(cfg, workdir)
    events = goodput.read_events(workdir)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.local_dir) for f in fs)
    saves = {kind: [e["seconds"] for e in events if e["event"] == kind and e["step"] != args.steps]
             for kind in ("checkpoint_save", "checkpoint_save_local")}  # the final step's wait is not a save
    per = {k: float(np.median(v)) for k, v in saves.items()}
    print(f"saves: {len(saves['checkpoint_save'])} persistent, {len(saves['checkpoint_save_local'])} local; local "
          f"tier on disk: {size / 2**20:.1f} MiB")
    print(f"checkpoint_tiers: persistent={per['checkpoint_save']:.3f} s local={per['checkpoint_save_local']:.3f} s "
          f"per save (median), ratio local/persistent={per['checkpoint_save_local'] / per['checkpoint_save']:.2f}")


if __name__ == "__main__":
    main()
