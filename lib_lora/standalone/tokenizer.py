"""CLIP's BPE tokenizer, offline.

Single-file checkpoints carry the text encoders' weights but not the tokenizer's vocabulary. It is
found, in this order, in:

1. a folder the user names (``vocab.json`` + ``merges.txt``, directly or in ``tokenizer/``, or
   open_clip's ``bpe_simple_vocab_16e6.txt.gz``);
2. the Hugging Face cache entry of ``openai/clip-vit-large-patch14`` (or the SDXL bigG repo, same
   vocabulary), without going online;
3. the ``bpe_simple_vocab_16e6.txt.gz`` that the open_clip package ships, when it is installed
   (located without importing it) and turned into vocab/merges as CLIP's own tokenizer does.

SDXL's second tokenizer is the same vocabulary padding with ``!`` (id 0) instead of the end token.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_lora.common.errors import UserError

CLIP_REPOS = ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP keeps the first 49152 - 256 - 2 merges of its BPE file (after the header line)
MAX_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"

INSTALL_HINT = (
    "Install open_clip (pip install open_clip_torch), or download the tokenizer once while online "
    "(huggingface-cli download openai/clip-vit-large-patch14 vocab.json merges.txt), or give a folder "
    "holding vocab.json and merges.txt."
)


@dataclass(frozen=True)
class TokenizerFiles:
    """Where the vocabulary came from (``user`` | ``hf-cache`` | ``open_clip`` | ``generated``) and its files."""

    source: str
    vocab: Path
    merges: Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table (in CLIP's order)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def clip_vocab(merges: Sequence[str]) -> dict[str, int]:
    """CLIP's vocabulary for a list of merges ("a b" lines, no header): the 256 byte characters,
    the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_files(folder: str | os.PathLike, merges: Sequence[str]) -> TokenizerFiles:
    """Write ``vocab.json``, ``merges.txt`` and the small config files a ``CLIPTokenizer`` folder has."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = list(merges)[:MAX_MERGES]
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("\n".join([MERGES_HEADER, *merges]) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {**special, "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True,
              "tokenizer_class": "CLIPTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return TokenizerFiles("generated", vocab_path, merges_path)


def merges_from_open_clip_bpe(path: str | os.PathLike) -> list[str]:
    """The merges of an open_clip/CLIP ``bpe_simple_vocab_16e6.txt.gz``: its lines after the first,
    as many as CLIP uses."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable CLIP BPE vocabulary ({exc}).") from None
    merges = [line for line in lines[1 : MAX_MERGES + 1] if line.strip()]
    if not merges or any(len(line.split()) != 2 for line in merges):
        raise UserError(f"{path} is not a CLIP BPE vocabulary (expected one 'a b' merge per line).")
    return merges


# -- finding the files ------------------------------------------------------------------------------


def default_hf_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def _files_in(folder: Path) -> tuple[Path, Path] | None:
    for candidate in (folder, folder / "tokenizer"):
        vocab, merges = candidate / "vocab.json", candidate / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    return None


def find_in_hf_cache(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """vocab.json and merges.txt of a CLIP repo in the hub cache, without any network access."""
    cache = Path(cache_dir) if cache_dir is not None else default_hf_cache()
    if not cache.is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    for repo in CLIP_REPOS:
        found = [try_to_load_from_cache(repo, name, cache_dir=str(cache)) for name in ("vocab.json", "merges.txt")]
        if all(isinstance(path, str) and os.path.isfile(path) for path in found):
            return Path(found[0]), Path(found[1])  # type: ignore[arg-type]
    return None


def find_open_clip_bpe() -> Path | None:
    """open_clip's bundled BPE file, located through the import system without importing open_clip."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / OPEN_CLIP_BPE
        if path.is_file():
            return path
    return None


def resolve_tokenizer_files(
    user_dir: str | os.PathLike | None,
    work_dir: str | os.PathLike,
    *,
    hf_cache_dir: str | os.PathLike | None = None,
) -> TokenizerFiles:
    """Find CLIP's vocab/merges (see the module doc for the order). Files built from a BPE archive
    are written under ``work_dir``. Raises a UserError saying what to install or where to put files."""
    if user_dir is not None:
        folder = Path(user_dir)
        if not folder.is_dir():
            raise UserError(f"Tokenizer folder {folder} does not exist.")
        found = _files_in(folder)
        if found:
            return TokenizerFiles("user", *found)
        archive = folder / OPEN_CLIP_BPE
        if archive.is_file():
            files = write_tokenizer_files(work_dir, merges_from_open_clip_bpe(archive))
            return TokenizerFiles("user", files.vocab, files.merges)
        raise UserError(
            f"Tokenizer folder {folder} holds neither vocab.json + merges.txt nor {OPEN_CLIP_BPE}.",
            "Copy those files of openai/clip-vit-large-patch14 there.",
        )
    found = find_in_hf_cache(hf_cache_dir)
    if found:
        return TokenizerFiles("hf-cache", *found)
    archive = find_open_clip_bpe()
    if archive is not None:
        files = write_tokenizer_files(work_dir, merges_from_open_clip_bpe(archive))
        return TokenizerFiles("open_clip", files.vocab, files.merges)
    raise UserError("CLIP's tokenizer vocabulary was not found on this machine (the model needs it).", INSTALL_HINT)


# -- building tokenizers ------------------------------------------------------------------------------


def tokenizer_from_files(files: TokenizerFiles, pad_token: str | None = None):
    """A transformers ``CLIPTokenizer`` (77 tokens) from vocab/merges; ``pad_token="!"`` for SDXL's bigG."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="lib_lora_tok_") as tmp:
        # a tokenizer folder of our own, so the same from_pretrained call works on every transformers version
        folder = Path(tmp)
        (folder / "vocab.json").write_bytes(files.vocab.read_bytes())
        (folder / "merges.txt").write_bytes(files.merges.read_bytes())
        special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token or EOS}
        (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
        config = {**special, "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True}
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def load_clip_tokenizers(
    family: str,
    user_dir: str | os.PathLike | None = None,
    *,
    hf_cache_dir: str | os.PathLike | None = None,
) -> dict[str, object]:
    """Tokenizers by text-encoder component: ``{"te": ...}`` (SD1) or ``{"te1": ..., "te2": ...}`` (SDXL)."""
    with tempfile.TemporaryDirectory(prefix="lib_lora_bpe_") as work:
        files = resolve_tokenizer_files(user_dir, work, hf_cache_dir=hf_cache_dir)
        return tokenizers_for(family, files)


def tokenizers_for(family: str, files: TokenizerFiles) -> dict[str, object]:
    try:
        if family == "sd1":
            return {"te": tokenizer_from_files(files)}
        return {"te1": tokenizer_from_files(files), "te2": tokenizer_from_files(files, pad_token="!")}
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"The CLIP tokenizer files in {files.vocab.parent} could not be read ({exc}).") from None
