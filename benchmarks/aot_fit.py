"""The TPU fit table (BENCHMARKS.md, "TPU fit"): which per-chip batch, mesh and remat policy compile and fit for the
paper's 1B and 8B configs at sequence length 4096 on 256-chip TPU slices, compiled ahead of time here (needs libtpu;
the one that the installed jax pins, `pip install "jax[tpu]==<jax version>"`).

    python benchmarks/aot_fit.py [--models=llada_1b,llada_8b] [--topologies=v5e-256,v5p-256,v6e-256]

For each (model, topology) the candidates are tried in order, the first that fits is reported: remat
`save_dots_no_batch` (cheapest recomputation) before `full`, and for each the fewest micro-batches. Every row
keeps the paper's global batch of 1280 sequences, reached with gradient accumulation (train.micro_batches) where
one step of 1280 would not fit; only micro-batch counts whose micro-batch divides over the chips are tried.
v5p-256 names TensorCores: it is 128 chips. An 8B compile takes several minutes on a 2-core machine.
"""
import argparse
import json
import time
from importlib import metadata

from llada_jax import aot, config as config_lib

REMATS = ("save_dots_no_batch", "full")


def candidates(global_batch, chips, remats=REMATS, max_micro=10):
    """(remat, micro-batches) in the order tried: cheapest remat first, and for each the fewest micro-batches (more
    accumulation costs less than recomputing the forward pass: the weights are gathered again per micro-batch)."""
    micros = [m for m in range(1, max_micro + 1) if global_batch % (m * chips) == 0]
    return [(r, m) for r in remats for m in micros]


def fit_arguments(doc, topologies, remats_help):
    """The command line both fit tables take (this script and gpu_fit.py): the models, topologies and remat policies
    to try, the global batch and sequence length, and a file for the rows as JSON lines."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llada_1b,llada_8b")
    p.add_argument("--topologies", default=topologies)
    p.add_argument("--remats", default=",".join(REMATS), help=remats_help)
    p.add_argument("--global_batch", type=int, default=1280)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--out", default="", help="also write the rows as JSON lines to this file")
    return p


def candidate_config(model, remat, micro, args):
    """configs/MODEL.py with a candidate's remat policy and micro-batch count, at the command line's batch and
    length."""
    cfg = config_lib.load_config(f"configs/{model}.py")
    cfg.model.remat, cfg.train.micro_batches = remat, micro
    cfg.train.global_batch, cfg.train.seq_len = args.global_batch, args.seq_len
    return cfg


def print_header(versions, columns):
    """The table's first lines: a comment with the versions and settings after jax's, then a Markdown header; a row
    follows per compiled candidate."""
    print(f"<!-- jax {metadata.version('jax')}, {versions} -->")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def model_topologies(args):
    """(model, topology, devices) for each model and topology of the command line, in order."""
    for model in args.models.split(","):
        for topo in args.topologies.split(","):
            yield model, topo, aot.parse_topology(topo)[2]


def write_rows(path, rows):
    """Called after every row, so that a long run that is stopped keeps what it measured."""
    if path:
        with open(path, "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in rows)


def main():
    p = fit_arguments(__doc__, "v5e-256,v5p-256,v6e-256", "remat policies to try, in order")
    p.add_argument("--max_micro_batches", type=int, default=10)
    p.add_argument("--loss_chunk", type=int, default=None,
                   help="model.loss_chunk (tokens per head chunk; 0 = [B, T, vocab] logits); default: the config's")
    args = p.parse_args()
    loss_chunk = "config" if args.loss_chunk is None else args.loss_chunk
    print_header(f"libtpu {metadata.version('libtpu')}, loss_chunk {loss_chunk}",
                 ["model", "topology", "chips", "mesh (data, fsdp, tensor)", "remat", "micro-batches",
                  "sequences per chip per micro-batch", "memory per chip", "HBM", "fits"])
    rows = []
    for model, topo, chips in model_topologies(args):
        for remat, micro in candidates(args.global_batch, chips, args.remats.split(","), args.max_micro_batches):
            cfg = candidate_config(model, remat, micro, args)
            if args.loss_chunk is not None:
                cfg.model.loss_chunk = args.loss_chunk
            per_chip = args.global_batch / chips / micro
            t0 = time.perf_counter()
            try:
                r = aot.compile_step(cfg, topo)
            except aot.DoesNotFit as e:
                need = str(e).split("required for HLO temporaries (")[-1].split(")")[0]
                print(f"| {model} | {topo} | {chips} | | {remat} | {micro} | {per_chip:g} | temporaries alone "
                      f"{need} | | no (compile-time OOM) |", flush=True)
                rows.append({"model": model, "topology": topo, "remat": remat, "micro_batches": micro,
                             "fits": False, "error": str(e), "compile_seconds": time.perf_counter() - t0})
                write_rows(args.out, rows)
                continue
            except Exception as e:  # noqa: BLE001  (report and try the next candidate)
                print(f"<!-- {model} {topo} {remat} x{micro}: {type(e).__name__}: {str(e)[:300]} -->", flush=True)
                continue
            m = r["mesh"]
            line = (f"| {model} | {topo} | {r['devices']} | {m['data']}, {m['fsdp']}, {m['tensor']} | {remat} | "
                    f"{micro} | {per_chip:g} | {r['total_bytes'] / 2**30:.2f} GiB | "
                    f"{r['hbm_bytes'] / 2**30:.0f} GiB | {'yes' if r['fits'] else 'no'} |")
            print(line, flush=True)
            rows.append({"model": model, "topology": topo, **r})
            write_rows(args.out, rows)
            if r["fits"]:
                break


if __name__ == "__main__":
    main()
