"""Small generated datasets for training tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lib_lora.events import RecordingEvents, StopToken


class StopAtStep(RecordingEvents):
    """Records a run's events and asks ``token`` to stop once step ``at`` is done."""

    def __init__(self, token: StopToken, at: int) -> None:
        super().__init__()
        self.token, self.at = token, at

    def step(self, info) -> None:
        super().step(info)
        if info.step == self.at:
            self.token.request("test stop")


def make_dataset(root: Path, folders: dict[str, list[tuple[int, int]]], captions: bool = True, seed: int = 0) -> Path:
    """``folders``: folder name -> image sizes. Images are smooth colour fields, so latents differ."""
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for folder, sizes in folders.items():
        (root / folder).mkdir(exist_ok=True)
        for i, (w, h) in enumerate(sizes):
            index += 1
            image = Image.new("RGB", (w, h))
            pixels = image.load()
            for y in range(h):
                for x in range(w):
                    pixels[x, y] = ((x * 255 // w + 40 * index) % 256, (y * 255 // h + 17 * seed) % 256, (90 * i) % 256)
            path = root / folder / f"img{i:02d}.png"
            image.save(path)
            if captions:
                token = folder.split("_", 1)[-1]
                path.with_suffix(".txt").write_text(f"{token}, tag{i % 3}, colour field", encoding="utf-8")
    return root


def small_dataset(root: Path) -> Path:
    return make_dataset(root, {"2_alpha": [(64, 64), (96, 64), (64, 96)], "1_beta": [(80, 64), (64, 64)]})


PRESET_SIZES = [(512, 512), (384, 640), (640, 384), (448, 576), (576, 448), (512, 768)]


def preset_dataset(root: Path) -> Path:
    """The training issue's check: 12 images of mixed aspect ratios, two folders, different repeats."""
    return make_dataset(root, {"1_irene": PRESET_SIZES, "2_outfit": PRESET_SIZES[::-1]})


def small_run_config(tmp_path: Path, out: str = "out", **values):
    """The TrainConfig of a small engine-level run on tiny-sd15: ``tmp_path/data`` into
    ``tmp_path/out`` as ``t``, 64 px, batch 2, 2 epochs saved each, dim 4, seed 7; ``values`` override."""
    from lib_lora.config import build_config

    base = {
        "train_data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / out), "output_name": "t",
        "resolution": "64", "train_batch_size": 2, "max_train_epochs": 2, "save_every_n_epochs": 1, "seed": 7,
        "network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "mixed_precision": "no",
    }  # fmt: skip
    return build_config({**base, **values}, family="sd1")
