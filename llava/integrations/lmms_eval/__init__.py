"""lmms-eval plugin: the `fastervlm` model (models/fastervlm.py) and local tasks (tasks/, for `--include_path`).

lmms-eval 0.7.x finds models outside its package through the Python entry-point group ``lmms_eval.models``
(lmms_eval/models/registry_v2.py, `ModelRegistryV2.load_entrypoint_manifests`, called when lmms_eval.models is
imported): each entry point loads to a `ModelManifest`, an iterable of them, or a callable returning one.
pyproject.toml declares ``fastervlm = "llava.integrations.lmms_eval:manifests"`` in that group, so after
``pip install -e ".[lmms]"`` the model is there with no environment variable and nothing patched. The older
``LMMS_EVAL_PLUGINS=llava.integrations.lmms_eval`` route (deprecated in 0.7, lmms_eval/models/__init__.py and
lmms_eval/__main__.py) also works: it reads `models.AVAILABLE_MODELS` and adds `tasks/` to the task paths.

Only lmms-eval imports this package (it needs the `[lmms]` extra).
"""

from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "fastervlm"
MODEL_CLASS = "llava.integrations.lmms_eval.models.fastervlm.FasterVLM"


def manifests() -> list[ModelManifest]:
    """The entry point's payload: one simple (non-chat) model, `--model fastervlm`."""
    return [ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)]
