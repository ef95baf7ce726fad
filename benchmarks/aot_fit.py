"""The README's fit table: which per-chip batch, mesh and remat policy compile and fit for the paper's 1B and 8B
configs at sequence length 4096 on 256-chip TPU slices, compiled ahead of time here (needs libtpu).

    python benchmarks/aot_fit.py [--models=llada_1b,llada_8b] [--topologies=v5e-256,v5p-256,v6e-256]

For each (model, topology) the candidates are tried in order, the first that fits is reported; every row keeps
the paper's global batch of 1280 sequences, reached with gradient accumulation (train.micro_batches) where one
step of 1280 would not fit. v5p-256 names TensorCores: it is 128 chips.
"""
import argparse
import json

from llada_jax import aot, config as config_lib

# (remat policy, micro-batches): cheapest recomputation first, then more accumulation.
CANDIDATES = [("save_dots_no_batch", 1), ("full", 1), ("full", 5), ("full", 10)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llada_1b,llada_8b")
    p.add_argument("--topologies", default="v5e-256,v5p-256,v6e-256")
    p.add_argument("--global_batch", type=int, default=1280)
    p.add_argument("--out", default="", help="also write the rows as JSON lines to this file")
    args = p.parse_args()
    rows = []
    print("| model | topology | chips | mesh | remat | micro-batches | sequences per chip per micro-batch | "
          "memory per chip | HBM | fits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for topo in args.topologies.split(","):
            for remat, micro in CANDIDATES:
                cfg = config_lib.load_config(f"configs/{model}.py")
                cfg.model.remat, cfg.train.micro_batches = remat, micro
                cfg.train.global_batch, cfg.train.seq_len = args.global_batch, 4096
                try:
                    r = aot.compile_step(cfg, topo)
                except aot.DoesNotFit as e:
                    need = str(e).split("required for HLO temporaries (")[-1].split(")")[0]
                    print(f"| {model} | {topo} | | | {remat} | {micro} | "
                          f"{args.global_batch / aot.parse_topology(topo)[2] / micro:g} | temporaries alone "
                          f"{need} | | no (compile-time OOM) |", flush=True)
                    continue
                except Exception as e:  # noqa: BLE001  (report and try the next candidate)
                    print(f"<!-- {model} {topo} {remat} x{micro}: {type(e).__name__}: {str(e)[:200]} -->")
                    continue
                per_chip = args.global_batch / r["devices"] / micro
                line = (f"| {model} | {topo} | {r['devices']} | {r['mesh']} | {remat} | {micro} | {per_chip:g} | "
                        f"{r['total_bytes'] / 2**30:.2f} GiB | {r['hbm_bytes'] / 2**30:.0f} GiB | "
                        f"{'yes' if r['fits'] else 'no'} |")
                print(line, flush=True)
                rows.append({"model": model, "topology": topo, **r})
                if r["fits"]:
                    break
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
