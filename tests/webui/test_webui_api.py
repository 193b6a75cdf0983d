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


@pytest.fixture
def api(webui):
    from lib_lora.webui import register

    register.register()
    webui.shared.cmd_opts.api = True
    app = FastAPI()
    webui.script_callbacks.app_started_callback(None, app)
    return TestClient(app)


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
    client = TestClient(app)
    assert client.get(f"{V1}/jobs/x").status_code == 401
    assert client.get(f"{V1}/jobs/x", auth=("alice", "wrong")).status_code == 401
    assert client.get(f"{V1}/jobs/x", auth=("bob", "pw")).status_code == 404
