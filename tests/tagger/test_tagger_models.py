"""Model registry, local model folders, and the Hugging Face cache: offline, download, missing.

No network: the cache is a temporary folder (``HF_HUB_CACHE``) built by hand, and downloads go to
a local stand-in for the Hub's file endpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents
from lib_lora.tagger import models
from lib_lora.tagger.models import DEFAULT_MODEL, MODELS, find_spec, is_cached, local_model_files, resolve_model
from support.tagger_hub import COMMIT, FakeHub, make_cache_entry
from support.tagger_tiny import write_tiny_tagger


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache in a temporary folder, selected the way users do it (environment)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads the environment once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture()
def tiny_files(tmp_path: Path) -> dict[str, bytes]:
    folder = write_tiny_tagger(tmp_path / "tiny-src")
    return {name: (folder / name).read_bytes() for name in ("model.onnx", "selected_tags.csv")}


def test_registry_lists_the_v2_and_v3_taggers() -> None:
    repos = {spec.repo_id for spec in MODELS.values()}
    assert repos == {
        "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
        "SmilingWolf/wd-v1-4-convnext-tagger-v2",
        "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
        "SmilingWolf/wd-v1-4-vit-tagger-v2",
        "SmilingWolf/wd-v1-4-moat-tagger-v2",
        "SmilingWolf/wd-swinv2-tagger-v3",
        "SmilingWolf/wd-convnext-tagger-v3",
        "SmilingWolf/wd-vit-tagger-v3",
        "SmilingWolf/wd-vit-large-tagger-v3",
        "SmilingWolf/wd-eva02-large-tagger-v3",
    }
    assert DEFAULT_MODEL == "wd-v1-4-swinv2-tagger-v2"
    for spec in MODELS.values():
        assert (spec.model_file, spec.labels_file) == ("model.onnx", "selected_tags.csv")
        assert (spec.general_threshold, spec.character_threshold) == (0.35, 0.85)
        if spec.generation == "v3":
            assert spec.min_onnxruntime == "1.17.0"
    assert find_spec("convnext-v3") is MODELS["wd-convnext-tagger-v3"]
    assert find_spec("SmilingWolf/wd-v1-4-vit-tagger-v2") is MODELS["wd-v1-4-vit-tagger-v2"]
    assert find_spec("EVA02-large-v3") is MODELS["wd-eva02-large-tagger-v3"]
    assert find_spec("nope") is None


def test_local_folder_and_onnx_path(tmp_path: Path) -> None:
    folder = write_tiny_tagger(tmp_path / "my-tagger")
    files = resolve_model(str(folder))
    assert (files.source, files.name, files.spec) == ("folder", "my-tagger", None)
    assert files.model_path == folder / "model.onnx" and files.labels_path == folder / "selected_tags.csv"
    assert resolve_model(folder / "model.onnx").model_path == folder / "model.onnx"


def test_local_folder_without_the_csv_says_so(tmp_path: Path) -> None:
    folder = write_tiny_tagger(tmp_path / "no-csv", with_labels=False)
    with pytest.raises(UserError, match=r"no-csv has no selected_tags\.csv .*Put the selected_tags\.csv"):
        local_model_files(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty has no model\.onnx"):
        resolve_model(str(empty))


def test_unknown_names_and_missing_paths() -> None:
    with pytest.raises(UserError, match=r"Unknown tagger model 'swinv9'.*convnext-v3"):
        resolve_model("swinv9")
    with pytest.raises(UserError, match=r"folder \./not/here does not exist"):
        resolve_model("./not/here")


def test_offline_uses_the_cache_without_any_request(
    hf_cache: Path, tiny_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = make_cache_entry(hf_cache, "SmilingWolf/wd-v1-4-swinv2-tagger-v2", tiny_files)
    monkeypatch.setattr(models, "download_model_files", _no_download)
    files = resolve_model(DEFAULT_MODEL)  # the default cache, from HF_HUB_CACHE
    assert files.source == "cache"
    assert files.model_path == snapshot / "model.onnx"
    assert files.labels_path == snapshot / "selected_tags.csv"
    assert is_cached("swinv2-v2") and not is_cached("convnext-v3")


def test_pinned_revision_and_main_fallback(hf_cache: Path, tiny_files: dict[str, bytes]) -> None:
    spec = MODELS["wd-v1-4-convnext-tagger-v2"]
    assert spec.revision == "v2.0"
    # another tool downloaded the repo head (refs/main): reused
    make_cache_entry(hf_cache, spec.repo_id, tiny_files, revision="main", commit="a" * 40)
    assert resolve_model("convnext-v2", allow_download=False).model_path.parent.name == "a" * 40
    # the pinned tag wins once it is there
    make_cache_entry(hf_cache, spec.repo_id, tiny_files, revision="v2.0", commit="b" * 40)
    assert resolve_model("convnext-v2", allow_download=False).model_path.parent.name == "b" * 40


def test_download_goes_into_the_shared_cache_with_progress(hf_cache: Path, tiny_files: dict[str, bytes]) -> None:
    repo = "SmilingWolf/wd-vit-tagger-v3"
    served = {(repo, name): content for name, content in tiny_files.items()}
    events = RecordingEvents()
    with FakeHub(served) as hub:
        files = resolve_model("vit-v3", endpoint=hub.endpoint, events=events)
        assert any(path.startswith(f"/{repo}/resolve/main/model.onnx") for _, path in hub.requests)
    assert files.source == "download"
    assert files.model_path.read_bytes() == tiny_files["model.onnx"]
    assert files.model_path.is_relative_to(hf_cache / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / COMMIT)
    size = len(tiny_files["model.onnx"])
    assert events.last_progress == ("downloading", size, size, "model.onnx")
    assert any("Downloading model.onnx" in text and repo in text for text in events.texts("info"))
    # a second resolve is served by the cache: no request at all
    with FakeHub(served) as hub:
        assert resolve_model("vit-v3", endpoint=hub.endpoint).source == "cache"
        assert hub.requests == []


def test_pinned_revision_is_requested_and_recorded(hf_cache: Path, tiny_files: dict[str, bytes]) -> None:
    repo = "SmilingWolf/wd-v1-4-vit-tagger-v2"
    served = {(repo, name): content for name, content in tiny_files.items()}
    with FakeHub(served) as hub:
        resolve_model("vit-v2", endpoint=hub.endpoint)
        assert {path.split("/")[4] for _, path in hub.requests} == {"v2.0"}
    refs = hf_cache / "models--SmilingWolf--wd-v1-4-vit-tagger-v2" / "refs"
    assert (refs / "v2.0").read_text() == COMMIT


def test_neither_cache_nor_network_names_the_repo_and_the_manual_way(hf_cache: Path) -> None:
    with FakeHub({}) as hub, pytest.raises(UserError) as info:  # the Hub answers 404 for everything
        resolve_model("eva02-large-v3", endpoint=hub.endpoint)
    text = str(info.value)
    assert "SmilingWolf/wd-eva02-large-tagger-v3" in text
    assert "https://huggingface.co/SmilingWolf/wd-eva02-large-tagger-v3" in text
    assert "model.onnx and selected_tags.csv" in text and "pass that folder" in text
    assert "could not be downloaded from SmilingWolf/wd-eva02-large-tagger-v3" in text
    # offline: one sentence with the fix, none of the hub's own paragraph
    with pytest.raises(UserError) as offline:
        resolve_model("swinv2-v3", endpoint="http://127.0.0.1:9")
    text = str(offline.value)
    assert text.startswith(
        "The tagger model wd-swinv2-tagger-v3 (SmilingWolf/wd-swinv2-tagger-v3) is not downloaded yet and "
        "Hugging Face cannot be reached: connect to the internet once, or put model.onnx and selected_tags.csv "
        "from https://huggingface.co/SmilingWolf/wd-swinv2-tagger-v3 in one folder"
    ), text
    assert text.endswith("(demo-tagger needs no download).") and text.count(". ") == 0 and "\n" not in text
    assert "Error" not in text and "Hub" not in text
    with pytest.raises(UserError, match=r"not in the Hugging Face cache and downloads are turned off"):
        resolve_model("swinv2-v3", allow_download=False)
    assert not list(hf_cache.glob("models--*/snapshots/*/*"))


def test_hf_hub_offline_is_respected(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "download_model_files", _no_download)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        resolve_model("vit-v3")


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("no download expected")


def test_the_builtin_demo_tagger_needs_no_download_and_is_what_the_generator_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.tagger_tiny import write_demo_tagger

    monkeypatch.setattr(models, "download_model_files", _no_download)
    files = resolve_model("demo-tagger", allow_download=False)
    assert (files.name, files.source, files.spec) == ("demo-tagger", "builtin", None)
    assert models.is_cached("demo-tagger")
    made = write_demo_tagger(tmp_path / "made")
    for name in ("model.onnx", "selected_tags.csv"):  # regenerate with write_demo_tagger's docstring command
        assert (models.DEMO_FOLDER / name).read_bytes() == (made / name).read_bytes(), name


def test_the_demo_tagger_tags_the_demo_datasets_colours(tmp_path: Path) -> None:
    from lib_lora.data.demo import write_demo_dataset
    from lib_lora.tagger import TagFolderOptions, tag_folder

    root = write_demo_dataset(tmp_path / "data").root
    tag_folder(TagFolderOptions(folder=str(root), model="demo-tagger"))
    caption = {p.parent.name: set(p.read_text(encoding="utf-8").split(", ")) for p in root.rglob("*_01.txt")}
    assert {"red theme", "simple background", "no humans"} <= caption["3_redfox"]
    assert {"blue sky", "outdoors"} <= caption["2_bluebird"] and "red theme" not in caption["2_bluebird"]
    assert {"green theme", "nature"} <= caption["2_greenleaf"] and "blue sky" not in caption["2_greenleaf"]
