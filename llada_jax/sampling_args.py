"""The sampling settings: one schema, read by the config's `sampling` block, the CLI flags of `llada sample / chat /
eval`, the decoders, the task evaluations and lm-eval.

`SamplingArgs` holds the defaults and the "off" values (threshold <= 0, cache "none"); the default config's
`sampling` block is `SamplingArgs().to_config()`, and a run's block becomes arguments with
`SamplingArgs.from_config(cfg.sampling)`. The rules behind each field: docs/sampling.md.

A trained run's command (`llada sample / chat / eval`) that sets some fields gets the others from the run, and
`follow` makes the dependent ones follow: steps keep the run's tokens per step, pure diffusion stays pure diffusion.
"""
import dataclasses

import ml_collections

REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    """Arguments of the decoders (the reverse process, block diffusion, left to right)."""
    gen_length: int = 32  # tokens generated after the prompt
    block_length: int = 8  # = gen_length: pure diffusion; smaller: semi-autoregressive blocks
    steps: int = 32  # a multiple of gen_length / block_length; ignored by threshold decoding
    temperature: float = 0.0  # 0: argmax; > 0: Gumbel-max sampling of softmax(logits / T)
    cfg_scale: float = 0.0  # > 0: classifier-free guidance, logits = u + (w + 1)(c - u)
    remasking: str = "low_confidence"  # low_confidence | random
    logits_eos_inf: bool = False  # EOS logit -inf before sampling
    confidence_eos_eot_inf: bool = False  # EOS/EoT predictions get confidence 0 (the official chained assignment)
    threshold: float = 0.0  # > 0: Fast-dLLM threshold decoding (commit every position this confident); <= 0: off
    cache: str = "none"  # none | prefix | dual: Fast-dLLM's approximate KV caches
    attend_padding: bool = False  # True: left pads stay visible as keys, as the released modeling code computes

    @property
    def use_threshold(self):
        return self.threshold > 0

    @property
    def cached(self):
        return self.cache != "none"

    @classmethod
    def from_config(cls, block):
        """The arguments of a config's `sampling` block (a ConfigDict or a dict with every field)."""
        return cls(**{f.name: block[f.name] for f in dataclasses.fields(cls)})

    def to_config(self):
        return ml_collections.ConfigDict(dataclasses.asdict(self))


FIELDS = tuple(f.name for f in dataclasses.fields(SamplingArgs))


def num_blocks(gen_length, block):
    """The blocks of `block` tokens that gen_length tokens take, a part-filled last one counted (gen_length / block
    rounded up; block diffusion decodes whole blocks)."""
    return -(-gen_length // block)


def following_steps(gen_length, run_gen_length, run_steps, blocks):
    """The steps that keep a run's tokens per step at `gen_length`: gen_length * run_steps / run_gen_length, rounded
    up to a positive multiple of `blocks` (the number of blocks; integer arithmetic, so exact)."""
    return blocks * max(1, -(-gen_length * run_steps // (run_gen_length * blocks)))


def follow(run, args, given, block_size=None):
    """The arguments a trained run samples with when a command sets the fields named in `given` (CLI flags or
    --config.sampling.* overrides, alike): `run` is the run's own SamplingArgs, `args` the same with the given
    values. The fields not given that depend on others follow them:

    - block_length: a run that decodes by pure diffusion (its block_length = its gen_length) keeps doing so at a new
      gen_length; otherwise the run's block_length stays.
    - steps: the run's tokens per step are kept, steps = gen_length * run.steps / run.gen_length rounded up to a
      positive multiple of the number of blocks: gen_length / block_length, or for a block-diffusion model
      (`block_size` given) gen_length / block_size rounded up. At the run's own gen_length this is the run's steps
      whenever they are valid.

    Values that cannot follow (non-positive lengths, a block_length that does not divide gen_length) are left as
    they are for the decoder's checks to report."""
    if "block_length" not in given and run.block_length == run.gen_length:
        args = dataclasses.replace(args, block_length=args.gen_length)
    unit = block_size or args.block_length
    if ("steps" in given or min(run.gen_length, run.steps, args.gen_length, unit) <= 0
            or (block_size is None and args.gen_length % unit)):
        return args
    blocks = num_blocks(args.gen_length, unit)
    return dataclasses.replace(args, steps=following_steps(args.gen_length, run.gen_length, run.steps, blocks))


@dataclasses.dataclass(frozen=True)
class TokenIds:
    mask_id: int
    eos_id: int
    eot_id: int

    @classmethod
    def from_config(cls, cfg):
        return cls(mask_id=cfg.tokens.mask_id, eos_id=cfg.tokens.eos_id, eot_id=cfg.tokens.eot_id)
