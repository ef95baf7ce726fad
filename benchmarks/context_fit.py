"""Long-context fit table: the paper's 1B and 8B train steps at 32k and 128k tokens on a 256-core v5p slice, across
context-parallel sizes (mesh.context; the rest of the chips on fsdp), compiled ahead of time here (needs libtpu).
Attention is all-gather context parallelism (docs/architecture.md#context-parallelism) with TPU splash attention on
the local queries; remat full, one sequence per batch shard, bfloat16 compute.

    python benchmarks/context_fit.py [--models=llada_1b,llada_8b] [--seq_lens=32768,131072] [--contexts=1,8,32]

One line per point: per-device memory, whether it fits, the collectives, the compile time; and the K/V bytes a
device gathers per layer (forward): 2 x (C - 1)/C x sequence x kv_heads x head_dim x 2 bytes per sequence.
"""
import argparse

from llada_jax import aot, config as config_lib


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llada_1b,llada_8b")
    p.add_argument("--seq_lens", default="32768,131072")
    p.add_argument("--contexts", default="1,8,32")
    p.add_argument("--topology", default="v5p-256")
    args = p.parse_args()
    print("| model | tokens | mesh (data, fsdp, context) | batch | per device | fits | K/V gathered per layer | "
          "collectives (all-gather, all-reduce) | compile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for seq in map(int, args.seq_lens.split(",")):
            for ctx in map(int, args.contexts.split(",")):
                cfg = config_lib.load_config(f"configs/{model}.py")
                m = cfg.model
                m.max_seq_len, cfg.train.seq_len, cfg.mesh.context = seq, seq, ctx
                cfg.model.remat, cfg.train.micro_batches = "full", 1
                _, _, _, devices = aot.topology_devices(args.topology)
                cfg.train.global_batch = len(devices) // ctx  # one sequence per batch shard
                kv = 2 * (ctx - 1) / ctx * seq * m.n_kv_heads * (m.d_model // m.n_heads) * 2
                try:
                    r = aot.compile_step(cfg, args.topology)
                except aot.DoesNotFit as e:
                    print(f"| {model} | {seq} | - , -, {ctx} | {cfg.train.global_batch} | - | no ({e}) | "
                          f"{kv / 2**20:.0f} MiB | - | - |", flush=True)
                    continue
                mesh, col = r["mesh"], r["collectives"]
                print(f"| {model} | {seq} | {mesh['data']}, {mesh['fsdp']}, {mesh['context']} | {r['global_batch']} | "
                      f"{r['total_bytes'] / 2**30:.2f} GiB | {'yes' if r['fits'] else 'no'} | {kv / 2**20:.0f} MiB | "
                      f"{col['all-gather']}, {col['all-reduce']} | {r['compile_seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
