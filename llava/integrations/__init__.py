"""Pruning for models that are not ours: one subpackage per library (`transformers`), one adapter module per model
family inside it."""
