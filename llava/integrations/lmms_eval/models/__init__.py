"""Models of the plugin, in the layout lmms-eval's deprecated LMMS_EVAL_PLUGINS route reads
(``<plugin>.models.<name>.<class>``, lmms_eval/models/__init__.py `_merge_legacy_plugin_models`)."""

AVAILABLE_MODELS = {"fastervlm": "FasterVLM"}
