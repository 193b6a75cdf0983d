"""A fake UIHost for the tab's unit tests: no model, no GPU; "training" writes small real files.

``FakeHost.train`` checks the dataset like the real job (a scan; UserError for none), reports a few
steps per epoch with a falling loss and saves one ``name-00000N.safetensors`` (with ss_* metadata)
plus ``name-00000N.json`` per epoch, so the tab's live view, epoch list and grid can be exercised.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from lib_lora.events import SampleImage, SavedFile, StepInfo
from lib_lora.jobs.dataset_info import cached_scan
from lib_lora.jobs.manager import JobManager
from lib_lora.ui.host import GridRequest, GridResult, HostSettings, ModelInfo


def write_fake_lora(path: Path, epoch: int, step: int, session: str = "1") -> None:
    import torch
    from safetensors.torch import save_file

    meta = {"ss_session_id": session, "ss_epoch": str(epoch), "ss_steps": str(step), "ss_output_name": path.stem}
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(path), metadata=meta)


class FakeHost:
    kind = "standalone"

    def __init__(self, root: Path, info: ModelInfo | None = None, steps_per_epoch: int = 3) -> None:
        self.root = Path(root)
        self.out = self.root / "lora-out"
        self.info = info or ModelInfo(True, "fake-model.safetensors", "sd1", False, 2)
        self.jobs = JobManager()
        self.steps_per_epoch = steps_per_epoch
        self.trained: list[Any] = []
        self.train_choices: list[tuple[Any, bool]] = []  # (resume, overwrite) of each train call
        self.grids: list[GridRequest] = []
        self.wrapped: list[int] = []
        self.refreshed = 0
        self.sent: list[tuple[str, str]] = []
        self.step_delay = 0.0
        # a test's Event: the training waits after its first step until the test sets it, so it is running
        # for as long as the test needs (no sleep-paced run that a busy machine may see end first)
        self.hold: threading.Event | None = None

    def model_info(self) -> ModelInfo:
        return self.info

    def settings(self) -> HostSettings:
        return HostSettings()

    def output_dir_choices(self) -> dict[str, str]:
        return {"Lora folder": str(self.out), "Other folder": str(self.root / "other")}

    def default_output_dir(self) -> str:
        return str(self.out)

    def plan(self, cfg: Any, events: Any) -> Any:
        return cached_scan(cfg.train_data_dir)

    def train(self, cfg: Any, events: Any, stop: Any, resume: Any = None, overwrite: bool = False) -> Any:
        scan = cached_scan(cfg.train_data_dir, cfg.caption_extension)  # UserError for a bad dataset
        self.trained.append(cfg)
        self.train_choices.append((resume, overwrite))
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        epochs = cfg.max_train_epochs or 2
        total = epochs * self.steps_per_epoch
        step = 0
        for epoch in range(1, epochs + 1):
            for _ in range(self.steps_per_epoch):
                if stop.requested:
                    path = out / f"{cfg.output_name}-step{step:08d}.safetensors"
                    write_fake_lora(path, epoch, step)
                    events.saved(SavedFile(path, epoch, step, 0.1, "stopped"))
                    return type("Result", (), {"status": "stopped"})()
                step += 1
                loss = 0.2 / step
                events.step(StepInfo(epoch, step, total, loss, loss, {"unet": 1e-4}, 0.01, 10.0, (total - step) * 0.1))
                if step == 1 and self.hold is not None:
                    self.hold.wait(60)
                time.sleep(self.step_delay)
            path = out / f"{cfg.output_name}-{epoch:06d}.safetensors"
            write_fake_lora(path, epoch, step)
            path.with_suffix(".json").write_text(json.dumps({"activation text": "redfox"}), encoding="utf-8")
            events.saved(SavedFile(path, epoch, step, 0.2 / step, "epoch"))
            sample = out / f"{cfg.output_name}-sample-{epoch}.png"
            Image.new("RGB", (64, 64), (epoch * 60, 0, 0)).save(sample)
            events.sample(SampleImage(sample, epoch, step, "redfox"))
        events.info(f"trained on {scan.num_images} images")
        return type("Result", (), {"status": "done"})()

    def render_grid(self, request: GridRequest, events: Any, stop: Any) -> GridResult:
        self.grids.append(request)
        images = [
            Image.new("RGB", (32, 32), (i * 40 % 255, 90, 90))
            for i in range(len(request.lora_files) * len(request.prompts))
        ]
        grid = Image.new("RGB", (32 * len(request.prompts), 32 * len(request.lora_files)))
        saved = self.root / "grid.png"
        grid.save(saved)
        return GridResult(images, [p.stem for p in request.lora_files], list(request.prompts), grid, saved)

    def refresh_loras(self) -> None:
        self.refreshed += 1

    def wrap_long_handler(self, fn: Any, n_outputs: int) -> Any:
        self.wrapped.append(n_outputs)
        return fn
