"""Peak memory and speed of `llada convert` on a paper-sized model: random weights, export then import.

    python benchmarks/convert_memory.py [--config=configs/llada_1b.py] [--dtype=bfloat16] [--dir=/tmp/llada_convert]
                                        [--config.a.b=value ...] [--keep]

Writes a random checkpoint as training does (checkpoint.Checkpointer: one chunk per layer), then measures, each in a
fresh process: `to-hf` of it, `from-hf` of the export, and `to-hf` of the imported run (one chunk per layer). Peak
memory is the process's ru_maxrss minus that of an idle process that imported the same libraries, reported as a
fraction of the checkpoint's size. The parent imports nothing heavy: a forked child starts with its parent's resident
memory as its high-water mark. Disk: about 4 x the checkpoint; everything is deleted unless --keep.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np


def _maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(op, args):
    """Runs one conversion in this (fresh) process and prints its measurements as JSON."""
    from llada_jax.convert import hf
    quiet = lambda *a: None
    t0 = time.perf_counter()
    if op == "write":
        from llada_jax import config as config_lib
        cfg = config_lib.build_config(args[0], json.loads(args[2]))
        out = write_random_run(cfg, args[1])
    elif op == "baseline":
        import jax  # noqa: F401  (the libraries a conversion imports)
        import orbax.checkpoint  # noqa: F401
        import tensorstore  # noqa: F401

        from llada_jax import checkpoint  # noqa: F401
        out = {}
    elif op == "to_hf":
        out = hf.to_hf(args[0], args[1], log=quiet)
    else:
        out = hf.from_hf(args[0], args[1], log=quiet)
    print(json.dumps({**out, "maxrss": _maxrss_bytes(), "seconds": time.perf_counter() - t0}))


def measure(op, *args):
    res = subprocess.run([sys.executable, __file__, "--_child", op, *args], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{op} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_random_run(cfg, run_dir, seed=0):
    """A run directory with random params in model.param_dtype, saved by checkpoint.Checkpointer (as training does)."""
    from llada_jax import checkpoint, model as model_lib, rundir
    rng = np.random.default_rng(seed)
    dtype = np.dtype(model_lib.Model(cfg.model).param_dtype)

    def rand(shape):
        out = np.empty(shape, dtype)
        for i in range(shape[0]):  # row by row: no float32 copy of the whole array
            out[i] = (rng.standard_normal(shape[1:], np.float32) * 0.02).astype(dtype)
        return out

    abstract = model_lib.Model(cfg.model).abstract_params()
    params = {k: ({kk: rand(vv.shape) for kk, vv in v.items()} if isinstance(v, dict) else rand(v.shape))
              for k, v in abstract.items()}
    cfg.checkpoint.async_save = False
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"), cfg)
    ckpt.save(0, {"params": params, "step": np.int32(0)}, {"position": 0}, cfg, force=True)
    ckpt.wait()
    ckpt.close()
    rundir.save_config(run_dir, cfg)
    arrays = [a for v in params.values() for a in (v.values() if isinstance(v, dict) else [v])]
    return {"name": cfg.name, "params": model_lib.count_params(cfg.model), "size": sum(a.nbytes for a in arrays),
            "largest": max(a.nbytes for a in arrays)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        return child(argv[1], argv[2:])
    from llada_jax import cli  # light: argparse only
    overrides, rest = cli.split_config_args(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/llada_1b.py")
    p.add_argument("--dtype", default="bfloat16", help="model.param_dtype of the random checkpoint")
    p.add_argument("--dir", default="/tmp/llada_convert_bench")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(rest)
    overrides = overrides + [("model.param_dtype", args.dtype)]
    shutil.rmtree(args.dir, ignore_errors=True)
    run, exported, imported, again = (os.path.join(args.dir, n) for n in ("run", "hf", "imported", "hf_again"))
    try:
        w = measure("write", args.config, run, json.dumps(overrides))
        size = w["size"]
        print(f"{w['name']}: {w['params'] / 1e9:.2f}B params, {args.dtype} checkpoint {size / 1e9:.2f} GB (largest "
              f"array {w['largest'] / 1e9:.2f} GB = {w['largest'] / size:.1%}), written in {w['seconds']:.0f}s")
        base = measure("baseline")["maxrss"]
        print(f"baseline (idle process with the same imports): {base / 1e6:,.0f} MB")
        print(f"{'step':<36} {'peak - baseline':>16} {'of checkpoint':>14} {'MB/s':>7} {'seconds':>8}")
        for label, op, src, dst in (("to-hf (training checkpoint)", "to_hf", run, exported),
                                    ("from-hf", "from_hf", exported, imported),
                                    ("to-hf (imported, chunk per layer)", "to_hf", imported, again)):
            r = measure(op, src, dst)
            peak = r["maxrss"] - base
            print(f"{label:<36} {peak / 1e6:>13,.0f} MB {peak / size:>14.1%} {size / 1e6 / r['seconds']:>7.0f} "
                  f"{r['seconds']:>8.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
