"""CLIP's tokenizer offline: vocabulary layout, and where the files are found (user folder, HF cache,
open_clip's bundled BPE archive), with a generated small vocabulary in fake locations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.standalone import tokenizer as tok
from lib_lora.standalone.tiny import tiny_merges
from support import standalone_checkpoints as sc

MERGES = list(tiny_merges())


@pytest.fixture
def no_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No HF cache entry and no open_clip: an empty cache folder from the environment."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(tok, "find_open_clip_bpe", lambda: None)
    return cache


def test_vocab_layout_is_clips() -> None:
    vocab = tok.clip_vocab(MERGES)
    assert vocab["!"] == 0  # the token SDXL's bigG tokenizer pads with
    assert vocab["a</w>"] == 320  # CLIP's id for "a" (bytes first, then bytes + </w>)
    assert vocab[MERGES[0].replace(" ", "")] == 512
    assert vocab[tok.BOS] == 512 + len(MERGES) and vocab[tok.EOS] == 513 + len(MERGES)
    assert len(vocab) == 514 + len(MERGES)
    assert len(set(tok.bytes_to_unicode().values())) == 256


def test_tokenizer_from_generated_files(tmp_path: Path) -> None:
    files = tok.write_tokenizer_files(tmp_path, MERGES)
    assert files.merges.read_text().splitlines()[0] == tok.MERGES_HEADER
    clip = tok.tokenizer_from_files(files)
    bigg = tok.tokenizer_from_files(files, pad_token="!")
    eos = 513 + len(MERGES)
    ids = clip("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == eos - 1 and ids[1] == 320
    assert ids[ids.index(eos) :] == [eos] * (77 - ids.index(eos))  # CLIP-L pads with EOS
    ids2 = bigg("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids2[ids2.index(eos) + 1 :] == [0] * (76 - ids2.index(eos))  # bigG pads with "!"
    assert clip.model_max_length == 77


def test_user_folder_wins_and_accepts_three_layouts(tmp_path: Path, no_sources: Path) -> None:
    plain = tok.write_tokenizer_files(tmp_path / "plain", MERGES)
    assert tok.resolve_tokenizer_files(tmp_path / "plain", tmp_path / "w1") == tok.TokenizerFiles(
        "user", plain.vocab, plain.merges
    )
    nested = tok.write_tokenizer_files(tmp_path / "diffusers" / "tokenizer", MERGES)
    assert tok.resolve_tokenizer_files(tmp_path / "diffusers", tmp_path / "w2").vocab == nested.vocab
    sc.write_bpe_archive(tmp_path / "archive" / tok.OPEN_CLIP_BPE, MERGES)
    built = tok.resolve_tokenizer_files(tmp_path / "archive", tmp_path / "w3")
    assert built.source == "user"
    assert built.vocab.read_text() == plain.vocab.read_text()
    assert built.merges.read_text() == plain.merges.read_text()


def test_user_folder_errors(tmp_path: Path, no_sources: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        tok.resolve_tokenizer_files(tmp_path / "nope", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds neither vocab.json \+ merges.txt"):
        tok.resolve_tokenizer_files(tmp_path / "empty", tmp_path / "w")


def test_hf_cache_entry_is_found_offline(tmp_path: Path, no_sources: Path) -> None:
    files = tok.write_tokenizer_files(tmp_path / "src", MERGES)
    snapshot = sc.fake_hf_cache(
        no_sources,
        "openai/clip-vit-large-patch14",
        {"vocab.json": files.vocab.read_bytes(), "merges.txt": files.merges.read_bytes()},
    )
    found = tok.resolve_tokenizer_files(None, tmp_path / "w")
    assert found.source == "hf-cache" and found.vocab == snapshot / "vocab.json"
    # an explicit cache folder works too, and an unrelated repo is not taken for CLIP's
    assert tok.find_in_hf_cache(no_sources) == (snapshot / "vocab.json", snapshot / "merges.txt")
    other = tmp_path / "other"
    sc.fake_hf_cache(other, "someone/else", {"vocab.json": b"{}", "merges.txt": b""})
    assert tok.find_in_hf_cache(other) is None


def test_open_clip_archive_is_found_without_importing_open_clip(
    tmp_path: Path, no_sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the real find_open_clip_bpe, but keep an empty HF cache
    monkeypatch.setenv("HF_HUB_CACHE", str(no_sources))
    package = tmp_path / "site" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('open_clip must not be imported')\n")
    sc.write_bpe_archive(package / tok.OPEN_CLIP_BPE, MERGES)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import importlib

    importlib.invalidate_caches()
    found = tok.resolve_tokenizer_files(None, tmp_path / "work")
    assert found.source == "open_clip"
    assert "open_clip" not in sys.modules
    assert found.vocab.read_text() == tok.write_tokenizer_files(tmp_path / "ref", MERGES).vocab.read_text()
    tokenizers = tok.tokenizers_for("sdxl", found)
    assert set(tokenizers) == {"te1", "te2"} and tokenizers["te2"].pad_token_id == 0


def test_nothing_found_says_what_to_do(tmp_path: Path, no_sources: Path) -> None:
    with pytest.raises(UserError) as info:
        tok.load_clip_tokenizers("sd1")
    text = str(info.value)
    assert "open_clip" in text and "vocab.json" in text and "openai/clip-vit-large-patch14" in text


def test_damaged_archive_is_a_clear_error(tmp_path: Path, no_sources: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / tok.OPEN_CLIP_BPE).write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="not a readable CLIP BPE vocabulary"):
        tok.resolve_tokenizer_files(folder, tmp_path / "w")
