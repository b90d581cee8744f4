"""Token constants shared by the model, the prompt builders and the eval scripts (same values as LLaVA)."""

IGNORE_INDEX = -100
# Stands in the token ids where `<image>` was in the prompt; replaced by visual embeddings.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
