"""llada-jax: LLaDA masked-diffusion language models in JAX."""
from setuptools import find_packages, setup

setup(
    name="llada-jax",
    version="0.1.0",
    description="LLaDA (Large Language Diffusion Models) in JAX/Flax: sharded training, sampling, evaluation.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["llada_jax", "llada_jax.*"]) + ["llada_jax.configs", "llada_jax.configs.sweeps"],
    # configs/ lives at the top of the repository (configs as code) and ships inside the package, so that
    # `llada train` finds its default config in any install.
    package_dir={"llada_jax.configs": "configs", "llada_jax.configs.sweeps": "configs/sweeps"},
    # The remote-code files shipped into every `llada convert to-hf` export.
    package_data={"llada_jax.convert": ["hf_files/*.py"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "sentencepiece>=0.2",
        "tensorstore>=0.1.70",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",  # `llada sweep` plots
    ],
    extras_require={
        # Tests also exercise conversion (torch, transformers) and TPU AOT compilation (libtpu, CPU-only use);
        # jax[tpu] brings the libtpu this jax pins (a newer libtpu compiles, but jaxlib cannot read its HLO back).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "safetensors>=0.4", "transformers>=4.46",
                 "jax[tpu]; platform_system == 'Linux'",
                 "lm_eval>=0.4", "gguf>=0.10", "tokenizers>=0.19", "jinja2>=3.1", "accelerate>=0.26", "wandb>=0.19"],
        "torch": ["torch>=2.3", "safetensors>=0.4"],
        "hf": ["torch>=2.3", "safetensors>=0.4", "transformers>=4.46"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
        "lm_eval": ["lm_eval>=0.4"],  # llada_jax.lm_eval_adapter
        # `llada convert from-gguf`, the tokenizer.json it writes and the model's own chat template (jinja2)
        "gguf": ["gguf>=0.10", "tokenizers>=0.19", "jinja2>=3.1"],
        "wandb": ["wandb>=0.19"],  # logging.wandb: a Weights & Biases run of each training run
    },
    # llada-lm-eval: lm-evaluation-harness's command line with our model registered (`lm_eval --model llada_jax`
    # needs that: the harness has no plugin discovery).
    entry_points={"console_scripts": ["llada=llada_jax.cli:main", "llada-lm-eval=llada_jax.lm_eval_adapter:main"]},
)
