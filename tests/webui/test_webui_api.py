"""/lora-trainer/v1/ on the webui's FastAPI app (FastAPI 0.94, TestClient): train, report, stop,
tag; bad requests get 4xx with the reason; --api-auth is honoured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from support import webui_models as wm
from support.tagger_tiny import write_tiny_tagger
from support.webui_env import FAST, dataset, load_model, model_state, outputs, same_outputs, state_differences

V1 = "/lora-trainer/v1"
LOCAL = "http://127.0.0.1:7860"  # the webui without --listen


@pytest.fixture
def api(webui):
    from lib_lora.webui import register

    register.register()
    webui.shared.cmd_opts.api = True
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    return TestClient(app, base_url=LOCAL)


def wait(
    client: TestClient, job: str, states: tuple[str, ...] = ("done", "stopped", "failed"), timeout: float = 300
) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"{V1}/jobs/{job}").json()
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not reach {states}")


def config(folder: Path, **changes: Any) -> dict[str, Any]:
    return {**FAST, "train_data_dir": str(folder), "output_name": "apilora", **changes}


def test_train_reports_and_finishes(webui, api) -> None:
    model = load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    before, state = outputs(model), model_state(model)
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    body = {"preset": "character", "dataset": {"train_data_dir": str(folder)}, **config(folder, max_train_epochs=2)}
    response = api.post(f"{V1}/train", json=body)
    assert response.status_code == 200, response.text
    status = wait(api, response.json()["job"])
    assert status["state"] == "done" and status["error"] is None
    assert (status["epoch"], status["step"], status["total_steps"]) == (2, 2, 2)
    assert isinstance(status["loss"], float)
    assert sorted(Path(f).name for f in status["files"]) == ["apilora-000001.safetensors", "apilora.safetensors"]
    assert all(Path(f).parent == webui.lora_dir for f in status["files"])
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_the_status_of_a_scored_run_carries_the_recommendation(webui, api, monkeypatch) -> None:
    """score_epochs through the API: once the run has ended, the job's status says how the scoring
    went (the Train tab's sentence, the file whose metadata holds it); a run without it has null."""
    from lib_lora.formats.safetensors_io import read_header
    from lib_lora.jobs import scoring
    from lib_lora.webui import host as webui_host

    load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    monkeypatch.setattr(scoring, "AUTO_SETTINGS", scoring.ScoreSettings(seeds=(1,), flexibility_prompts=("beach",), drift_prompts=("sky",)))  # fmt: skip
    for key, value in (("width", 64), ("height", 64), ("steps", 2)):
        monkeypatch.setitem(webui_host.TXT2IMG_FALLBACK, key, value)
    monkeypatch.setattr(scoring, "load_tag_scorer", lambda model, events: lambda images: [{"hutao": 0.5} for _ in images])  # fmt: skip
    body = config(folder, sample_every_n_epochs=None, score_epochs=True)
    status = wait(api, api.post(f"{V1}/train", json=body).json()["job"])
    assert status["state"] == "done", status
    final = webui.lora_dir / "apilora.safetensors"
    words = read_header(final).metadata["lora_trainer_recommendation"]
    assert words.startswith("No confident pick")
    assert status["recommendation"] == {"state": "done", "sentence": words, "file": None, "epoch": None, "final": str(final)}  # fmt: skip
    plain = config(folder, sample_every_n_epochs=None, output_name="plain")
    assert wait(api, api.post(f"{V1}/train", json=plain).json()["job"])["recommendation"] is None


def test_the_recommendation_names_the_file_of_a_confident_pick(tmp_path) -> None:
    from types import SimpleNamespace

    from lib_lora.jobs import scoring
    from lib_lora.jobs.score_math import EpochScore, SeedScore, pick_best
    from lib_lora.webui.api import recommendation

    files = [tmp_path / "x-000001.safetensors", tmp_path / "x-000002.safetensors", tmp_path / "x.safetensors"]
    quality = (0.2, 0.9, 0.3)
    scores = [EpochScore(f.stem, e, [SeedScore(q, q, 0.1)] * 3) for e, (f, q) in enumerate(zip(files, quality), 1)]
    report = scoring.ScoreReport(scores, pick_best(scores), ["red hair"], "x", 30, 3.0, files)
    assert report.pick.confident
    done = SimpleNamespace(result=SimpleNamespace(scoring=scoring.AutoScore("done", report.pick.reason, report, files[-1])))  # fmt: skip
    assert recommendation(done) == {
        "state": "done", "sentence": report.pick.reason, "file": str(files[1]), "epoch": 2, "final": str(files[-1]),
    }  # fmt: skip
    stopped = SimpleNamespace(result=SimpleNamespace(scoring=scoring.AutoScore("stopped", scoring.STOPPED_SCORING)))
    assert recommendation(stopped) == {
        "state": "stopped", "sentence": scoring.STOPPED_SCORING, "file": None, "epoch": None, "final": None,
    }  # fmt: skip
    assert recommendation(SimpleNamespace(result=None)) is None  # running, or a tag job


def test_stop_a_running_job(webui, api) -> None:
    load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    folder = dataset(webui.root / "data", images=2, name="3_hutao")
    job = api.post(f"{V1}/train", json=config(folder, max_train_epochs=30, sample_every_n_epochs=None)).json()["job"]
    deadline = time.time() + 120
    while api.get(f"{V1}/jobs/{job}").json()["step"] < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    assert api.post(f"{V1}/jobs/{job}/stop").status_code == 200
    status = wait(api, job)
    assert status["state"] == "stopped"
    assert any("-step" in Path(f).name for f in status["files"])


def test_an_existing_run_is_409_unless_overwrite_and_a_locked_name_is_409(webui, api) -> None:
    from lib_lora.common.fsutil import FileLock

    load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    webui.lora_dir.mkdir(parents=True, exist_ok=True)
    (webui.lora_dir / "apilora.safetensors").write_bytes(b"the earlier run")
    response = api.post(f"{V1}/train", json=config(folder, max_train_epochs=1))
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"A run named apilora already exists in {webui.lora_dir} (1 LoRA file); resume it, use a new name such as "
        'apilora-2, or overwrite it. Send "resume": true to continue it or "overwrite": true.'
    )
    assert api.post(f"{V1}/train", json={**config(folder), "overwrite": "yes"}).status_code == 422
    with FileLock(webui.lora_dir / ".other.lock") as lock:  # another process training "other" here
        assert lock.acquire()
        busy = api.post(f"{V1}/train", json=config(folder, output_name="other"))
        assert busy.status_code == 409 and "is already writing other in" in busy.json()["detail"]
    response = api.post(f"{V1}/train", json={**config(folder, max_train_epochs=1), "overwrite": True})
    assert response.status_code == 200, response.text
    assert wait(api, response.json()["job"])["state"] == "done"
    (trash,) = (webui.lora_dir / ".trash").iterdir()
    assert (trash / "apilora.safetensors.old").read_bytes() == b"the earlier run"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"network_dims": 8}, "Unknown setting 'network_dims'"),
        ({"network_dim": 0}, "network_dim = 0 is not valid"),
        ({"learning_rate": "fast"}, "learning_rate = 'fast' is not valid"),
        ({"preset": "nope"}, "Unknown preset 'nope'"),
        ({"train_data_dir": ""}, "train_data_dir is empty"),
    ],
)
def test_invalid_config_is_422_with_the_reason(webui, api, body: dict, words: str) -> None:
    load_model(webui, wm.tiny_sd1())
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    response = api.post(f"{V1}/train", json={**config(folder), **body})
    assert response.status_code == 422 and words in response.json()["detail"]


def test_dataset_without_images_is_422_and_nothing_is_queued(webui, api) -> None:
    load_model(webui, wm.tiny_sd1())
    empty = webui.root / "empty" / "1_nothing"
    empty.mkdir(parents=True)
    response = api.post(f"{V1}/train", json=config(empty.parent))
    assert response.status_code == 422 and "no images" in response.json()["detail"].lower()
    from lib_lora.webui import register

    assert register.get_host().jobs.current() is None


def test_body_must_be_an_object(webui, api) -> None:
    load_model(webui, wm.tiny_sd1())
    assert api.post(f"{V1}/train", json=["train_data_dir"]).status_code == 422


@pytest.mark.parametrize("make, words", [(None, "No Stable Diffusion checkpoint"), (wm.tiny_sd2, "SD2.x")])
def test_untrainable_model_is_409(webui, api, make, words: str) -> None:
    if make is not None:
        load_model(webui, make())
    folder = dataset(webui.root / "data", images=1, name="1_hutao")
    response = api.post(f"{V1}/train", json=config(folder))
    assert response.status_code == 409 and words in response.json()["detail"]


def test_unknown_job_is_404(api) -> None:
    assert api.get(f"{V1}/jobs/nope").status_code == 404
    assert api.post(f"{V1}/jobs/nope/stop").status_code == 404


def test_tag_a_folder_with_a_local_tagger(webui, api) -> None:
    model_dir = write_tiny_tagger(webui.root / "tagger", size=64)
    folder = webui.root / "tagme" / "1_x"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "red.png")
    response = api.post(
        f"{V1}/tag", json={"folder": str(folder.parent), "model": str(model_dir), "existing": "overwrite"}
    )
    assert response.status_code == 200, response.text
    status = wait(api, response.json()["job"])
    assert status["state"] == "done", status
    assert "hu tao (genshin impact)" in (folder / "red.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, "folder is required"),
        ({"folder": "/nonexistent/folder"}, "does not exist"),
        ({"folder": ".", "general_threshold": 2}, "between 0 and 1"),
        ({"folder": ".", "colour": "red"}, "Unknown tagger option"),
    ],
)
def test_bad_tag_request_is_422(api, body: dict, words: str) -> None:
    response = api.post(f"{V1}/tag", json=body)
    assert response.status_code == 422 and words in response.json()["detail"]


def test_api_auth_is_required_when_the_webui_requires_it(webui) -> None:
    from lib_lora.webui import register

    register.register()
    webui.shared.cmd_opts.api = True
    webui.shared.cmd_opts.api_auth = "alice:secret,bob:pw"
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    client = TestClient(app, base_url=LOCAL)
    assert client.get(f"{V1}/jobs/x").status_code == 401
    assert client.get(f"{V1}/jobs/x", auth=("alice", "wrong")).status_code == 401
    assert client.get(f"{V1}/jobs/x", auth=("bob", "pw")).status_code == 404


def test_clean_a_folder_then_restore(webui, api) -> None:
    import numpy as np

    from support.lama_tiny import write_model

    model = write_model(webui.root / "lama" / "lama_fp32.onnx")
    folder = webui.root / "cleanme"
    (folder / "1_x").mkdir(parents=True)
    rgb = np.full((120, 160, 3), (40, 120, 200), dtype=np.uint8)
    rgb[100:112, 110:150] = (250, 20, 20)
    Image.fromarray(rgb).save(folder / "1_x" / "a.png")
    original = (folder / "1_x" / "a.png").read_bytes()
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[96:116, 104:156] = 255
    Image.fromarray(mask).save(webui.root / "mask.png")
    body = {"folder": str(folder), "mask": str(webui.root / "mask.png"), "model": str(model)}
    status = wait(api, api.post(f"{V1}/clean", json=body).json()["job"])
    assert status["state"] == "done" and "Cleaned 1 images." in status["messages"], status
    assert (np.asarray(Image.open(folder / "1_x" / "a.png"))[..., 0] < 200).all()
    status = wait(api, api.post(f"{V1}/clean", json={"folder": str(folder), "restore": True}).json()["job"])
    assert status["state"] == "done" and (folder / "1_x" / "a.png").read_bytes() == original


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, "folder must be an existing dataset folder"),
        ({"folder": "."}, "Give mask"),
        ({"folder": ".", "mask": "m.png", "masks": "m"}, "Give mask"),
        ({"folder": ".", "mask": "/nonexistent/mask.png"}, "does not exist"),
        ({"folder": ".", "brush": 3}, "Unknown clean option"),
    ],
)
def test_bad_clean_request_is_422(api, body: dict, words: str) -> None:
    response = api.post(f"{V1}/clean", json=body)
    assert response.status_code == 422 and words in response.json()["detail"]


def test_another_site_cannot_drive_the_api(webui) -> None:
    from lib_lora.webui import register

    register.register()
    webui.shared.cmd_opts.api = True
    webui.shared.cmd_opts.cors_allow_origins = "http://localhost:3000"
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    client = TestClient(app, base_url=LOCAL)
    assert client.get(f"{V1}/jobs/x").status_code == 404  # no Origin: a script or curl on this machine
    assert client.get(f"{V1}/jobs/x", headers={"Origin": LOCAL}).status_code == 404  # the webui's own page
    assert (
        client.get(f"{V1}/jobs/x", headers={"Origin": "http://localhost:3000"}).status_code == 404
    )  # --cors-allow-origins
    refused = client.post(f"{V1}/tag", json={"folder": "."}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "another site" in refused.json()["detail"]
    simple_form = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Content-Type": "text/plain"}
    assert client.post(f"{V1}/tag", content=b'{"folder": "."}', headers=simple_form).status_code == 403
    rebinding = TestClient(app, base_url="http://evil.example:7860")  # a hostile name resolving to 127.0.0.1
    assert rebinding.get(f"{V1}/jobs/x").status_code == 403


def test_relative_paths_are_resolved_and_reported_absolute(webui, api, monkeypatch) -> None:
    from lib_lora.webui.api import flatten_config

    monkeypatch.chdir(webui.root)
    response = api.post(f"{V1}/tag", json={"folder": "no/such/folder"})
    assert response.status_code == 422
    assert f"The folder {webui.root / 'no' / 'such' / 'folder'} does not exist" in response.json()["detail"]
    values, _ = flatten_config({"dataset": {"train_data_dir": "data/../data2"}, "network_weights": "~/x.safetensors"})
    assert values["train_data_dir"] == str(webui.root / "data2")
    assert values["network_weights"] == str(Path.home() / "x.safetensors")
