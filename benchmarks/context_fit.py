"""Long-context fit table: the paper's 1B and 8B train steps at 32k and 128k tokens on a 256-core v5p slice, across
context-parallel sizes (mesh.context; the rest of the chips on fsdp) and both strategies (model.context_parallel),
compiled ahead of time here (needs libtpu). allgather: TPU splash attention on the local queries over the gathered
keys and values; ring: the K/V chunks passed around the context devices (docs/architecture.md#context-parallelism).
Remat full, one sequence per batch shard, bfloat16 compute.

    python benchmarks/context_fit.py [--models=llada_1b,llada_8b] [--seq_lens=32768,131072] [--contexts=1,8,32]
        [--strategies=allgather,ring] [--objectives=mdm,block]

One line per point: per-device memory, whether it fits, the collectives, the compile time, and the bytes of keys
and values a device receives per layer and sequence (analytic, bfloat16): in the forward pass 2 x (C - 1)/C x
sequence x kv_heads x head_dim x 2 bytes under both strategies (all at once for allgather, one chunk per hop for
ring); over a whole step (the forward, its recomputation under remat full, and the backward) allgather gathers 3
times, and the ring passes the chunks 3 x (C - 1) hops plus C hops of their float32 key and value gradients.

    python benchmarks/context_fit.py --balance [--seq_lens=32768] [--contexts=8]

prints the work balance of ring attention instead: for the causal and block-diffusion masks, the score tiles each
device computes (query blocks of 512 x key half-chunks, a tile skipped when no query of it sees any key of it),
for a contiguous split and for zig-zag order, as max / mean over the devices (1.00: balanced) and the fraction of
all tiles computed.
"""
import argparse

import numpy as np

from llada_jax import aot, config as config_lib

GIB, MIB = 2 ** 30, 2 ** 20


def kv_bytes(m, seq, ctx, strategy):
    """(forward, whole step) bytes of keys and values a device receives per layer and sequence."""
    chunk = 2 * seq / ctx * m.n_kv_heads * (m.d_model // m.n_heads) * 2  # one device's K and V, bfloat16
    forward = (ctx - 1) * chunk
    if strategy == "allgather":
        return forward, 3 * forward
    return forward, 3 * forward + ctx * 2 * chunk  # + the float32 gradients' hops


def fit_table(args):
    print("| model | objective | tokens | strategy | mesh (data, fsdp, context) | batch | per device | fits | "
          "K/V received per layer (forward / step) | collectives (all-gather, all-reduce, collective-permute) | "
          "compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, objective in ((m, o) for m in args.models.split(",") for o in args.objectives.split(",")):
        for seq in map(int, args.seq_lens.split(",")):
            for ctx in map(int, args.contexts.split(",")):
                for strategy in args.strategies.split(","):
                    if ctx == 1 and strategy == "ring":
                        continue  # nothing to pass around
                    cfg = config_lib.load_config(f"configs/{model}.py")
                    cfg.objective, cfg.diffusion.block_size = objective, args.block_size
                    m = cfg.model
                    m.max_seq_len, cfg.train.seq_len, cfg.mesh.context = seq, seq, ctx
                    m.remat, m.context_parallel, cfg.train.micro_batches = "full", strategy, 1
                    _, _, _, devices = aot.topology_devices(args.topology)
                    cfg.train.global_batch = len(devices) // ctx  # one sequence per batch shard
                    fwd, step = kv_bytes(m, 2 * seq if objective == "block" else seq, ctx, strategy)  # the pair
                    kv = f"{fwd / MIB:.0f} / {step / MIB:.0f} MiB"
                    head = f"| {model} | {objective} | {seq} | {strategy if ctx > 1 else '-'} |"
                    try:
                        r = aot.compile_step(cfg, args.topology)
                    except aot.DoesNotFit as e:
                        print(f"{head} -, -, {ctx} | {cfg.train.global_batch} | - | no ({e}) | {kv} | - | - |",
                              flush=True)
                        continue
                    mesh, col = r["mesh"], r["collectives"] or {}
                    counts = ", ".join(str(col.get(k, "?")) for k in ("all-gather", "all-reduce",
                                                                     "collective-permute"))
                    print(f"{head} {mesh['data']}, {mesh['fsdp']}, {mesh['context']} | {r['global_batch']} | "
                          f"{r['total_bytes'] / GIB:.2f} GiB | {'yes' if r['fits'] else 'no'} | {kv} | {counts} | "
                          f"{r['compile_seconds']:.0f} s |", flush=True)


def tiles_per_device(allowed, index, ctx, rows=512):
    """Score tiles each of ctx devices computes: its queries (positions `index` of its part) in blocks of `rows`
    against every device's keys in two halves, a tile counted when any of its (query, key) pairs is allowed."""
    parts = index.reshape(ctx, -1)
    half = parts.shape[1] // 2
    work = []
    for q in parts:
        n = 0
        for k in parts:
            for kh in (k[:half], k[half:]):
                for qb in q.reshape(-1, rows):
                    n += bool(allowed(qb[:, None], kh[None, :]).any())
        work.append(n)
    return np.array(work)


def balance_table(args):
    from llada_jax import attention, context_parallel
    print("| mask | tokens | context | contiguous: max / mean | zig-zag: max / mean | tiles computed (zig-zag) |")
    print("|---|---|---|---|---|---|")
    for seq in map(int, args.seq_lens.split(",")):
        for ctx in map(int, args.contexts.split(",")):
            blocks = attention.Blocks(args.block_size, pair=True)
            masks = {"causal": (seq, lambda q, k: k <= q),
                     f"block {args.block_size}, [x_t ; x_0]": (
                         2 * seq, lambda q, k: attention.Blocks.allowed(blocks.id_of(q, 2 * seq),
                                                                        blocks.id_of(k, 2 * seq)))}
            for name, (t, allowed) in masks.items():
                plain = tiles_per_device(allowed, np.arange(t), ctx)
                zig = tiles_per_device(allowed, np.asarray(context_parallel.zigzag(np.arange(t), ctx, axis=0)), ctx)
                total = ctx * ctx * 2 * (t // ctx // 512)
                print(f"| {name} | {seq} | {ctx} | {plain.max() / plain.mean():.2f} | {zig.max() / zig.mean():.2f} | "
                      f"{zig.sum() / total:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llada_1b,llada_8b")
    p.add_argument("--seq_lens", default="32768,131072")
    p.add_argument("--contexts", default="1,8,32")
    p.add_argument("--strategies", default="allgather,ring")
    p.add_argument("--objectives", default="mdm", help="mdm (the full mask), block (the [x_t ; x_0] pair), arm")
    p.add_argument("--topology", default="v5p-256")
    p.add_argument("--balance", action="store_true", help="the ring's work balance instead of the fit table")
    p.add_argument("--block_size", type=int, default=32, help="block diffusion's block size")
    args = p.parse_args()
    (balance_table if args.balance else fit_table)(args)


if __name__ == "__main__":
    main()
