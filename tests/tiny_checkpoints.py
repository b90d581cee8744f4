"""Re-exported for the tests: the writers live in the package (the demo uses them too)."""

from llava.model.tiny import *  # noqa: F401,F403
from llava.model.tiny import make_clip_dir, make_llava_dir, make_llama_tokenizer_dir  # noqa: F401
