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
  sample    generate answers to prompts with a trained run (the reverse process, Fast-dLLM decoding)
  chat      multi-turn chat with a trained run (the official chat rules)
  eval      evaluate a trained run: perplexity bound, multiple choice by likelihood, built-in task accuracy
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


def _run_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description + " --config.sampling.*, --config.eval.* and "
                                "--config.mesh.* override the run's settings.")
    p.add_argument("--workdir", required=True, help="a run directory (`llada train` or `llada convert from-hf`)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece .model or HF tokenizer dir (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="sampling / evaluation randomness")
    return p


SAMPLING_FLAGS = ("gen_length", "block_length", "steps", "temperature", "cfg_scale", "remasking", "threshold", "cache")


def _sampling_flags(p):
    for name in SAMPLING_FLAGS:
        p.add_argument(f"--{name}", default=None, help=f"sampling.{name} (default: the run's config)")


def _open_run(args, overrides):
    from llada_jax import checkpoint, diffusion, inference, sampling, sharding
    overrides = list(overrides) + [(f"sampling.{n}", getattr(args, n)) for n in SAMPLING_FLAGS
                                   if getattr(args, n, None) is not None]
    try:
        run = inference.load_run(args.workdir, overrides, args.step, args.tokenizer)
        if run.cfg.objective == "block":
            sampling.validate_blocks(sampling.args_from_config(run.cfg.sampling), run.model,
                                     diffusion.block_size(run.cfg))
        else:
            sampling.validate(sampling.args_from_config(run.cfg.sampling), run.model)
        return run
    except (inference.InferenceError, checkpoint.CheckpointError, sharding.MeshError, sampling.SamplingError) as e:
        raise SystemExit(f"llada: {e}")


def cmd_sample(argv):
    overrides, rest = split_config_args(argv)
    p = _run_parser("llada sample", "Generate answers to prompts with a trained run.")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable: one batch)")
    p.add_argument("--prompt_file", default=None, help="a text file, one prompt per line")
    p.add_argument("--order_picture", default=None, help="write the denoising order of the answers (.html or .png)")
    _sampling_flags(p)
    args = p.parse_args(rest)
    prompts = list(args.prompt)
    if args.prompt_file:
        with open(args.prompt_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise SystemExit("llada sample: no prompt; pass --prompt=TEXT (repeatable) or --prompt_file=FILE.")
    run = _open_run(args, overrides)
    import time

    import jax

    from llada_jax import inference, picture
    t0 = time.perf_counter()
    try:
        out = run.sample(prompts, key=jax.random.key(args.seed))
    except inference.InferenceError as e:
        raise SystemExit(f"llada sample: {e}")
    seconds = time.perf_counter() - t0
    for prompt, text in zip(prompts, out["texts"]):
        print(f"{prompt}{text}")
    g = run.cfg.sampling.gen_length
    blocks = f", {int(out['blocks'])} blocks until EOS" if "blocks" in out else ""
    print(f"[{len(prompts)} x {g} tokens in {seconds:.2f}s (compilation included); {int(out['steps'])} steps"
          f"{blocks}, {int(out['full_passes'])} full + {int(out['window_passes'])} cached model evaluations]")
    if args.order_picture:
        rows = []
        for i, prompt in enumerate(prompts):
            gen, order = inference.generated_tokens(out, i)
            rows.append((prompt, [(run.codec.decode([int(t)]), int(s)) for t, s in zip(gen, order)]))
        picture.write(rows, args.order_picture)
        print(f"denoising order: {args.order_picture}")


def cmd_chat(argv):
    overrides, rest = split_config_args(argv)
    p = _run_parser("llada chat", "Multi-turn chat with a trained run (EOS removed from the history, EoT kept).")
    p.add_argument("--message", action="append", default=[],
                   help="a user turn (repeatable: a scripted conversation); without it, read turns from stdin")
    _sampling_flags(p)
    args = p.parse_args(rest)
    run = _open_run(args, overrides)
    import jax

    from llada_jax import inference
    try:
        chat = inference.Chat(run)
    except inference.InferenceError as e:
        raise SystemExit(f"llada chat: {e}")
    scripted = bool(args.message)
    messages = iter(args.message) if scripted else None
    turn = 0
    while True:
        if scripted:
            message = next(messages, None)
            if message is None:
                break
            print(f"user> {message}")
        else:
            try:
                message = input("user> ")
            except EOFError:
                break
            if message.strip() in ("", "exit", "quit"):
                break
        try:
            answer, _ = chat.say(message, key=jax.random.key(args.seed + turn))
        except inference.InferenceError as e:
            raise SystemExit(f"llada chat: {e}")
        print(f"assistant> {answer}")
        turn += 1


def cmd_eval(argv):
    overrides, rest = split_config_args(argv)
    p = _run_parser("llada eval", "Evaluate a trained run; writes the metrics to --out (default WORKDIR/eval.json).")
    p.add_argument("--perplexity", type=int, default=64,
                   help="held-out sequences for the ELBO perplexity bound (0: skip)")
    p.add_argument("--choices", default=None, help="a JSONL of {context, choices, answer}: accuracy by likelihood")
    p.add_argument("--tasks", default=None, help="built-in tasks scored by exact match (default: eval.tasks; "
                                                 "'none' to skip)")
    p.add_argument("--out", default=None, help="where to write the metrics (JSON)")
    _sampling_flags(p)
    args = p.parse_args(rest)
    if args.tasks is not None:
        overrides = list(overrides) + [("eval.tasks", "" if args.tasks == "none" else args.tasks)]
    run = _open_run(args, overrides)
    import json

    import jax

    from llada_jax import evaluate, inference
    try:
        metrics = evaluate.evaluate_run(run, jax.random.key(args.seed), choices=args.choices,
                                        perplexity=args.perplexity)
    except (evaluate.EvalError, inference.InferenceError, ValueError) as e:
        raise SystemExit(f"llada eval: {e}")
    out = args.out or os.path.join(args.workdir, "eval.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"metrics: {out}")


COMMANDS = {"train": cmd_train, "compile": cmd_compile, "data": cmd_data, "convert": cmd_convert, "sample": cmd_sample,
            "chat": cmd_chat, "eval": cmd_eval, "sweep": cmd_sweep}


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
