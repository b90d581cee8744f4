"""FasterVLM: LLaVA with visual tokens pruned by [CLS] attention before the language model."""

__version__ = "0.1.0"
