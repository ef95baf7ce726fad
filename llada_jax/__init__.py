"""llada-jax: LLaDA (Large Language Diffusion Models, Nie et al. 2025) in JAX."""
__version__ = "0.1.0"
