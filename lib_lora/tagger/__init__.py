"""The built-in WD tagger: SmilingWolf's ONNX taggers, exact preprocessing, batched folder runs.

What a front end calls:

- ``MODELS`` / ``DEFAULT_MODEL`` / ``find_spec`` / ``is_cached``: the model list for a dropdown;
- ``load_tagger(model, device=...)`` -> ``Tagger`` (cached; ``unload_taggers()`` frees it);
  ``Tagger.tag([pil_image], TagOptions(...))`` -> ``[Prediction]`` for one-image interrogation;
- ``tag_folder(TagFolderOptions(...), events, stop)`` -> ``TagFolderResult`` for a dataset folder.

``onnxruntime`` and ``huggingface_hub`` are imported only when a model is resolved or loaded.
"""

from lib_lora.tagger.batch import (
    CONFIDENCES_SUFFIX,
    FailedImage,
    TagFolderOptions,
    TagFolderResult,
    TaggedImage,
    confidences_path,
    tag_folder,
)
from lib_lora.tagger.labels import (
    EXISTING_POLICIES,
    Labels,
    Prediction,
    TagOptions,
    mcut_threshold,
    merge_caption,
    predict_tags,
    read_labels,
)
from lib_lora.tagger.models import (
    DEFAULT_MODEL,
    DEMO_MODEL,
    MODELS,
    ModelFiles,
    ModelSpec,
    find_spec,
    is_cached,
    resolve_model,
)
from lib_lora.tagger.preprocess import ImageReadError, load_image, prepare_image
from lib_lora.tagger.session import DEVICES, Tagger, load_tagger, plan_providers, unload_taggers

__all__ = [
    "CONFIDENCES_SUFFIX",
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "DEVICES",
    "EXISTING_POLICIES",
    "MODELS",
    "FailedImage",
    "ImageReadError",
    "Labels",
    "ModelFiles",
    "ModelSpec",
    "Prediction",
    "TagFolderOptions",
    "TagFolderResult",
    "TagOptions",
    "TaggedImage",
    "Tagger",
    "confidences_path",
    "find_spec",
    "is_cached",
    "load_image",
    "load_tagger",
    "mcut_threshold",
    "merge_caption",
    "plan_providers",
    "predict_tags",
    "prepare_image",
    "read_labels",
    "resolve_model",
    "tag_folder",
    "unload_taggers",
]
