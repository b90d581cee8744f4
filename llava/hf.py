"""`apply_pruning` for transformers' own Llava models, under its documented name (README); the code is in
llava/integrations/transformers/."""

from llava.integrations.transformers import apply_pruning  # noqa: F401
