"""The onnxruntime session: providers and their warnings, the model contract, fixed batch, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lib_lora.common.errors import UserError
from lib_lora.events import RecordingEvents
from lib_lora.tagger import models
from lib_lora.tagger.models import MODELS, local_model_files
from lib_lora.tagger.preprocess import prepare_image
from lib_lora.tagger.session import (
    CPU,
    CUDA,
    DIRECTML,
    Tagger,
    check_onnxruntime_version,
    load_tagger,
    plan_providers,
    unload_taggers,
)
from support.tagger_tiny import COLOURS, EXPECTED_CAPTIONS, TINY_LABELS, tiny_scores, write_tiny_tagger


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("dynamic"))


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("fixed"), fixed_batch=1)


def colour_batch(size: int, names: list[str]) -> np.ndarray:
    return np.stack([prepare_image(Image.new("RGB", (size, size), COLOURS[n]), size) for n in names])


def test_provider_plan() -> None:
    assert plan_providers("auto", [CUDA, CPU]).providers == [CUDA, CPU]
    assert plan_providers("auto", [DIRECTML, CPU]).providers == [DIRECTML, CPU]
    assert plan_providers("cpu", [CUDA, CPU]).providers == [CPU]
    assert plan_providers("cpu", [CUDA, CPU]).warning is None
    asked = plan_providers("cuda", [CPU], "1.32.0", ["onnxruntime"])
    assert asked.providers == [CPU]
    assert asked.warning == (
        "Tagging runs on the CPU: CUDA was asked for but this onnxruntime 1.32.0 build has no "
        "CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)."
    )
    auto = plan_providers("auto", [CPU], "1.32.0", ["onnxruntime"])
    assert "no GPU provider" in auto.warning and "onnxruntime-gpu" in auto.warning
    both = plan_providers("cuda", [CPU], "1.32.0", ["onnxruntime", "onnxruntime-gpu"])
    assert "both onnxruntime and onnxruntime-gpu are installed" in both.warning
    with pytest.raises(UserError, match="device must be one of"):
        plan_providers("tpu", [CPU])


def test_cuda_asked_for_but_unavailable_warns_visibly(dynamic_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    events = RecordingEvents()
    tagger = Tagger(local_model_files(dynamic_model), device="cuda", events=events)
    assert tagger.device == "CPU"
    [warning] = events.texts("warning")
    assert warning.startswith("Tagging runs on the CPU: CUDA was asked for but this onnxruntime")
    assert "onnxruntime-gpu" in warning


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_gpu_provider_that_fails_to_start_is_reported(dynamic_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime lists CUDA but the session comes up on the CPU (missing CUDA/cuDNN libraries)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    events = RecordingEvents()
    tagger = Tagger(local_model_files(dynamic_model), device="auto", events=events)
    assert tagger.providers == [CPU]
    [warning] = events.texts("warning")
    assert "CUDAExecutionProvider failed to start" in warning and "cuDNN" in warning


def test_explicit_cpu_is_quiet(dynamic_model: Path) -> None:
    events = RecordingEvents()
    Tagger(local_model_files(dynamic_model), device="cpu", events=events)
    assert events.texts("warning") == []


def test_contract_is_read_from_the_model(dynamic_model: Path, fixed_model: Path, tmp_path: Path) -> None:
    dynamic = Tagger(local_model_files(dynamic_model), device="cpu")
    assert (dynamic.input.name, dynamic.input.size, dynamic.input.batch) == ("input_1:0", 448, None)
    fixed = Tagger(local_model_files(fixed_model), device="cpu")
    assert fixed.input.batch == 1
    small = Tagger(local_model_files(write_tiny_tagger(tmp_path / "s", size=96)), device="cpu")
    assert small.size == 96


def test_fixed_batch_one_gives_the_same_scores_as_dynamic(dynamic_model: Path, fixed_model: Path) -> None:
    batch = colour_batch(448, ["red", "blue", "white"])
    dynamic = Tagger(local_model_files(dynamic_model), device="cpu").predict(batch)
    fixed = Tagger(local_model_files(fixed_model), device="cpu").predict(batch)
    assert fixed.shape == (3, len(TINY_LABELS))
    np.testing.assert_allclose(fixed, dynamic, atol=1e-6)
    expected = tiny_scores(np.array([COLOURS[n] for n in ("red", "blue", "white")]))
    np.testing.assert_allclose(dynamic, expected, atol=1e-5)


def test_fixed_batch_larger_than_one_pads_the_last_chunk(tmp_path: Path) -> None:
    tagger = Tagger(local_model_files(write_tiny_tagger(tmp_path / "b4", size=32, fixed_batch=4)), device="cpu")
    names = ["red", "green", "blue", "black", "white", "red"]
    scores = tagger.predict(colour_batch(32, names))
    assert scores.shape == (6, len(TINY_LABELS))
    np.testing.assert_allclose(scores, tiny_scores(np.array([COLOURS[n] for n in names])), atol=1e-5)


def test_tag_pil_images_reads_bgr(dynamic_model: Path) -> None:
    tagger = Tagger(local_model_files(dynamic_model), device="cpu")
    images = [Image.new("RGB", (300, 300), COLOURS["red"]), Image.new("RGB", (64, 64), COLOURS["blue"])]
    red, blue = tagger.tag(images)
    assert ", ".join(red.tags) == EXPECTED_CAPTIONS["red"]
    assert ", ".join(blue.tags) == EXPECTED_CAPTIONS["blue"]
    assert red.rating == "sensitive"


def test_label_count_mismatch(tmp_path: Path) -> None:
    folder = write_tiny_tagger(tmp_path / "mismatch", n_labels=len(TINY_LABELS) + 3)
    with pytest.raises(
        UserError, match=rf"lists {len(TINY_LABELS)} tags but the model .* has {len(TINY_LABELS) + 3} outputs"
    ):
        Tagger(local_model_files(folder), device="cpu")


@pytest.mark.parametrize(
    "shape",
    [[1, 3, 448, 448], [1, 448, 448], [1, 448, 224, 3]],
    ids=["nchw", "rank3", "not-square"],
)
def test_not_a_tagger(tmp_path: Path, shape: list[int]) -> None:
    folder = write_tiny_tagger(tmp_path / "other", input_shape=shape)
    with pytest.raises(UserError, match=r"is not a WD tagger: its input is .* but a WD tagger takes one float32 input"):
        Tagger(local_model_files(folder), device="cpu")


def test_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    folder = write_tiny_tagger(tmp_path / "garbage")
    (folder / "model.onnx").write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(UserError, match=r"model\.onnx"):
        Tagger(local_model_files(folder), device="cpu")


def test_v3_models_need_onnxruntime_1_17(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MODELS["wd-vit-tagger-v3"]
    error = check_onnxruntime_version(spec, "1.16.3")
    assert error is not None and "needs onnxruntime >= 1.17.0, but onnxruntime 1.16.3 is installed" in str(error)
    assert check_onnxruntime_version(spec, "1.17.0") is None
    assert check_onnxruntime_version(MODELS["wd-v1-4-vit-tagger-v2"], "1.10.0") is None
    folder = write_tiny_tagger(tmp_path / "v3")
    files = models.ModelFiles(spec.name, folder / "model.onnx", folder / "selected_tags.csv", spec, "cache")
    monkeypatch.setattr(ort, "__version__", "1.16.3")
    with pytest.raises(UserError, match="wd-vit-tagger-v3 needs onnxruntime >= 1.17.0"):
        Tagger(files, device="cpu")


def test_sessions_are_cached_until_unloaded(dynamic_model: Path) -> None:
    unload_taggers()
    first = load_tagger(str(dynamic_model), device="cpu")
    assert load_tagger(str(dynamic_model), device="cpu") is first
    assert unload_taggers() == 1
    assert load_tagger(str(dynamic_model), device="cpu") is not first
    unload_taggers()


def test_cached_tagger_repeats_its_cpu_warning(dynamic_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unload_taggers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    load_tagger(str(dynamic_model), device="cuda")
    events = RecordingEvents()
    load_tagger(str(dynamic_model), device="cuda", events=events)
    assert any("CUDA was asked for" in text for text in events.texts("warning"))
    unload_taggers()
