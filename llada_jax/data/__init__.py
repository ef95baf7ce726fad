"""Data: tokenizers, the built-in synthetic corpus, token stores and input pipelines."""
