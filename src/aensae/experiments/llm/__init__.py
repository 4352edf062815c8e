"""The LLM grid of ``aensae reproduce --config llm-*`` (SAEs on a language model's
activations, spliced evaluation). Needs the ``llm`` extra at run time."""
