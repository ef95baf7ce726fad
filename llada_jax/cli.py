"""The `llada` command: `llada SUBCOMMAND [--config=FILE[:ARG]] [--config.a.b=value ...] [--workdir=DIR]`."""
import argparse
import os
import sys

USAGE = """usage: llada COMMAND [options]

commands:
  train     train a model (default: the tiny config on the built-in synthetic corpus)
  compile   compile the train step ahead of time for a TPU topology; memory, FLOPs, collectives
  data      `data tokenizer`: train a sentencepiece tokenizer; `data prepare`: tokenize corpora into a token store
  convert   `convert to-hf`: export a run in the LLaDA Hugging Face layout; `convert from-hf`: import one
  sweep     train and evaluate every point of a sweep file; results table and plots (--print_commands)

common options:
  --config=configs/NAME.py[:ARG]   a config file (default configs/tiny.py)
  --config.a.b=VALUE               override one config key (repeatable)
  --workdir=DIR                    the run directory (default runs/<config name>)
  --print_config                   print the resolved config and exit
Run `llada COMMAND --help` for the options of one command."""


def split_config_args(argv):
    """Separates `--config.a.b=value` overrides from the other arguments."""
    overrides, rest = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                value = next(it, None)
                if value is None:
                    raise SystemExit(f"llada: {arg} needs a value: {arg}=VALUE")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return overrides, rest


def _base_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=None, help="config file, configs/NAME.py[:ARG] (default configs/tiny.py)")
    p.add_argument("--workdir", default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    return p


def _load(args, overrides):
    from llada_jax import config as config_lib
    try:
        cfg = config_lib.build_config(args.config, overrides)
    except config_lib.ConfigError as e:
        raise SystemExit(f"llada: config error: {e}")
    if args.print_config:
        print(config_lib.to_json(cfg))
        raise SystemExit(0)
    return cfg


def cmd_train(argv):
    overrides, rest = split_config_args(argv)
    args = _base_parser("llada train", "Train a LLaDA model (masked diffusion) or the ARM baseline.").parse_args(rest)
    cfg = _load(args, overrides)
    import jax

    from llada_jax import checkpoint, distributed, sharding, train
    distributed.maybe_initialize()
    workdir = args.workdir or os.path.join("runs", cfg.name)
    try:
        train.train(cfg, workdir)
    except (train.TrainError, sharding.MeshError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"llada train: {e}")
    if jax.process_index() == 0:
        print(f"done: run directory {workdir}")


def cmd_data(argv):
    """`llada data tokenizer ...` (train a sentencepiece model) and `llada data prepare ...` (build token stores)."""
    p = argparse.ArgumentParser(prog="llada data", description="Tokenizers and token stores.")
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer with the special pieces reserved")
    t.add_argument("--input", required=True, help="text / JSONL files (.gz ok), comma-separated globs")
    t.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    t.add_argument("--vocab_size", type=int, required=True)
    t.add_argument("--model_type", default="bpe", choices=["bpe", "unigram"])
    t.add_argument("--text_field", default="text", help="the text field of JSONL inputs")
    q = sub.add_parser("prepare", help="tokenize text / JSONL into train and val token stores")
    q.add_argument("--input", required=True, help="text / JSONL files (.gz ok), comma-separated globs")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--tokenizer", required=True, help="the sentencepiece .model")
    q.add_argument("--text_field", default="text", help="the text field of JSONL inputs")
    q.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    q.add_argument("--val_fraction", type=float, default=0.01, help="fraction of documents held out (by hash)")
    q.add_argument("--on_error", default="stop", choices=["stop", "skip"], help="on a malformed line")
    args = p.parse_args(argv)
    from llada_jax.data import prepare, tokenizer
    try:
        if args.action == "tokenizer":
            tokenizer.train(prepare.expand_inputs(args.input), args.out, args.vocab_size, args.model_type,
                            args.text_field)
        else:
            prepare.prepare(args.input, args.out, args.tokenizer, args.text_field, args.workers, args.val_fraction,
                            args.on_error)
    except (prepare.PrepareError, tokenizer.TokenizerError) as e:
        raise SystemExit(f"llada data {args.action}: {e}")


def cmd_compile(argv):
    overrides, rest = split_config_args(argv)
    p = _base_parser("llada compile", "Compile the train step ahead of time for a TPU topology (needs libtpu).")
    p.add_argument("--topology", required=True, help="e.g. v5e-256, v5p-128 (TensorCores), v6e-64, v5e:4x4")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(rest)
    cfg = _load(args, overrides)
    import json

    from llada_jax import aot, sharding, train
    try:
        report = aot.compile_step(cfg, args.topology)
    except (aot.CompileError, train.TrainError, sharding.MeshError) as e:
        raise SystemExit(f"llada compile: {e}")
    print(json.dumps(report, indent=2) if args.json else aot.format_report(report))
    if not report["fits"]:
        raise SystemExit(f"llada compile: the step does not fit: it needs {report['total_bytes'] / 2**30:.2f} GiB per device but "
                         f"the chip has {report['hbm_bytes'] / 2**30:.0f} GiB; use more devices, a smaller "
                         f"per-device batch (train.micro_batches), or model.remat=full.")


def cmd_convert(argv):
    """`llada convert to-hf --workdir=DIR --out=OUT ...` / `llada convert from-hf HF_DIR --out=DIR ...`."""
    from llada_jax.convert import hf
    hf.main(argv)


def cmd_sweep(argv):
    """`llada sweep --sweep=configs/sweeps/NAME.py --workdir=DIR [--config.a.b=v ...] [--print_commands]`."""
    overrides, rest = split_config_args(argv)
    p = _base_parser("llada sweep", "Train and evaluate every point of a sweep; write results.csv/.md and plots.")
    p.add_argument("--sweep", required=True, help="a sweep file, configs/sweeps/NAME.py, defining get_sweep()")
    p.add_argument("--print_commands", action="store_true", help="print one `llada train` command per run and exit")
    args = p.parse_args(rest)
    from pathlib import Path

    from llada_jax import checkpoint, sampling, sweep, tasks, train
    try:
        base, points = sweep.load_sweep(args.sweep)
        base, workdir = args.config or base, args.workdir or os.path.join("runs", "sweep_" + Path(args.sweep).stem)
        if args.print_commands:
            print("\n".join(sweep.launch_commands(base, points, workdir, overrides)))
        else:
            sweep.run_sweep(base, points, workdir, overrides)
    except (sweep.SweepError, tasks.TaskError, sampling.SamplingError, train.TrainError,
            checkpoint.CheckpointError) as e:
        raise SystemExit(f"llada sweep: {e}")


COMMANDS = {"train": cmd_train, "compile": cmd_compile, "data": cmd_data, "convert": cmd_convert, "sweep": cmd_sweep}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        argv = ["train"] + argv  # `llada` alone trains the default
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean `llada {close[0]}`?" if close else ""
        print(f"llada: unknown command {name!r}.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    COMMANDS[name](rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
