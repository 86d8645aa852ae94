"""esjax: Evolution Strategies (and a matching GRPO baseline) for full-parameter LLM fine-tuning in JAX."""

__version__ = "0.1.0"
