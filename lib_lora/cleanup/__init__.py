"""Dataset cleaning: paint over text, signatures, watermarks and censor bars; LaMa fills them in.

What a front end calls:

- ``MODELS`` / ``DEFAULT_MODEL`` / ``is_cached``: the LaMa models for a dropdown (``models``);
- ``load_lama(model, device=...)`` -> ``Lama`` (cached; ``unload_lama()`` frees it); any local
  ``.onnx`` with one of LaMa's two signatures works (``lama``);
- ``preview_clean(image, mask, lama)`` -> ``Preview`` (nothing written), ``write_preview(preview, root)``;
  ``clean_folder(folder, lama, masks_dir=... | mask=...)``; ``history.undo`` / ``history.restore`` /
  ``restore_folder`` put originals back byte for byte from ``<dataset>/.clean-history/``.

numpy + PIL; ``onnxruntime`` and ``huggingface_hub`` are imported only when a model is resolved or
loaded, through the tagger's session and Hub helpers (one runtime and provider policy for both).
"""

from lib_lora.cleanup import history
from lib_lora.cleanup.clean import (
    CleanFolderResult,
    Preview,
    clean_folder,
    clean_image,
    fit_mask,
    history_root,
    load_lama,
    mask_from_image,
    preview_clean,
    read_mask,
    restore_folder,
    unload_lama,
    write_preview,
)
from lib_lora.cleanup.lama import FOUR_CHANNEL, IMAGE_MASK, Lama, LamaContract, inpaint, read_contract
from lib_lora.cleanup.models import DEFAULT_MODEL, MODELS, LamaSpec, is_cached, resolve_lama

__all__ = [
    "DEFAULT_MODEL",
    "FOUR_CHANNEL",
    "IMAGE_MASK",
    "MODELS",
    "CleanFolderResult",
    "Lama",
    "LamaContract",
    "LamaSpec",
    "Preview",
    "clean_folder",
    "clean_image",
    "fit_mask",
    "history",
    "history_root",
    "inpaint",
    "is_cached",
    "load_lama",
    "mask_from_image",
    "preview_clean",
    "read_contract",
    "read_mask",
    "resolve_lama",
    "restore_folder",
    "unload_lama",
    "write_preview",
]
