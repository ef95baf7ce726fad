"""Fit table for NVIDIA GPUs: per-GPU memory of the real train step of the paper's 1B and 8B configs (sequence length
4096, global batch 1280) on 8 x H100 / 8 x H200, compiled ahead of time on this machine without a GPU (needs JAX's
CUDA plugin: `pip install "jax[cuda12]==<jax version>"`, the `gpu` extra; no driver).

    python benchmarks/gpu_fit.py [--models=llada_1b,llada_8b] [--topologies=h100:8,h200:8] [--remats=full]

For each (model, topology, remat policy) the global batch is reached with gradient accumulation (train.micro_batches)
and the fewest micro-batches whose step fits are searched by bisection over the counts that divide the batch over
the GPUs (memory grows with the per-GPU micro-batch); every compiled candidate is a row, the answer is marked.
"Fits" means within JAX's GPU allocator, XLA_PYTHON_CLIENT_MEM_FRACTION of the memory (0.75 unless set; the rest is
cuDNN / cuBLAS workspace, NCCL buffers and the CUDA context): raising it to ~0.9 at run time admits bigger batches.
"""
import time

from aot_fit import candidate_config, fit_arguments, model_topologies, print_header, write_rows  # the TPU table's

from llada_jax import aot

GIB = 1 << 30


def micro_batch_counts(global_batch, devices):
    """Micro-batch counts whose micro-batch divides over the devices, fewest first (the largest per-GPU batch)."""
    return [m for m in range(1, global_batch // devices + 1) if global_batch % (m * devices) == 0]


def main():
    args = fit_arguments(__doc__, "h100:8,h200:8", "remat policies, each searched on its own").parse_args()
    print_header(f"{aot.cuda_plugin()} {aot.installed_version('jax-cuda12-plugin', 'jax-cuda13-plugin')}, cuDNN "
                 f"{aot.installed_version(*aot.CUDNN_PACKAGES)}; global batch {args.global_batch} x {args.seq_len}",
                 ["model", "GPUs", "remat", "micro-batches", "sequences per GPU per micro-batch", "arguments",
                  "temporaries", "total per GPU", "of HBM", "fits"])
    rows = []
    for model, topo, gpus in model_topologies(args):
        for remat in args.remats.split(","):
            counts = micro_batch_counts(args.global_batch, gpus)
            lo, hi, best = 0, len(counts) - 1, None  # bisection: the fewest micro-batches that fit
            while lo <= hi:
                mid = (lo + hi) // 2
                micro = counts[mid]
                cfg = candidate_config(model, remat, micro, args)
                per_gpu = args.global_batch // gpus // micro
                t0 = time.perf_counter()
                try:
                    r = aot.compile_step(cfg, topo)
                except Exception as e:  # noqa: BLE001  (a candidate that cannot compile counts as not fitting)
                    print(f"<!-- {model} {topo} {remat} x{micro}: {type(e).__name__}: {str(e)[:300]} -->",
                          flush=True)
                    lo = mid + 1
                    continue
                rows.append({"model": model, **r, "seconds": time.perf_counter() - t0})
                print(f"| {model} | {r['devices']} x {r['device_kind']} | {remat} | {micro} | {per_gpu} | "
                      f"{r['argument_bytes'] / GIB:.2f} GiB | {r['temp_bytes'] / GIB:.2f} GiB | "
                      f"{r['total_bytes'] / GIB:.2f} GiB | {r['total_bytes'] / r['hbm_bytes']:.0%} of "
                      f"{r['hbm_bytes'] / GIB:.0f} GiB | {'yes' if r['fits'] else 'no'} |", flush=True)
                if r["fits"]:
                    best, hi = micro, mid - 1
                else:
                    lo = mid + 1
                write_rows(args.out, rows)
            print(f"<!-- {model} on {topo}, remat {remat}: "
                  + (f"fewest micro-batches that fit: {best} ({args.global_batch // gpus // best} sequences per "
                     f"GPU per micro-batch) -->" if best else "does not fit at any micro-batch count -->"),
                  flush=True)


if __name__ == "__main__":
    main()
