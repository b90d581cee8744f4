"""Re-exported for the tests: see `llava.model.tiny.make_llama_tokenizer_dir`."""

from llava.model.tiny import TOKENIZER_CONFIG, VOCAB_SIZE, make_llama_tokenizer_dir  # noqa: F401
