"""Text generation with the decoder: ``sampling`` (jitted KV-cache generation, ``SamplingConfig``), ``prompts``
(prompt text to token ids), ``tokenizer`` (loading tokenizers, small local ones for tests), ``inference`` (text in,
text out)."""

from esjax.generation.sampling import GenerateOutput, SamplingConfig, generate_jit, pad_prompts

__all__ = ["GenerateOutput", "SamplingConfig", "generate_jit", "pad_prompts"]
