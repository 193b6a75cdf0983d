"""sd-scripts' training options through the training job: a kohya_ss-style TOML using them trains one
epoch on the built-in tiny models and the file records them as sd-scripts does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.config import build_config, load_toml
from lib_lora.engine import blocks
from lib_lora.events import RecordingEvents
from lib_lora.formats import safetensors_io
from lib_lora.jobs.train import train
from support.train_data import make_dataset


def _toml(tmp_path: Path, family: str) -> Path:
    sdxl = family == "sdxl"
    count = blocks.num_blocks(sdxl)
    dims = ["4"] * count
    dims[5 if sdxl else 4] = "8"
    lines = [
        f'pretrained_model_name_or_path = "tiny-{"sdxl" if sdxl else "sd15"}"',
        f'train_data_dir = "{(tmp_path / "data").as_posix()}"',
        f'output_dir = "{(tmp_path / "out").as_posix()}"',
        'output_name = "opt"', 'resolution = "64"', "train_batch_size = 2", "max_train_epochs = 1", "seed = 3",
        'mixed_precision = "no"', 'network_module = "networks.lora"', "network_dim = 4", "network_alpha = 2",
        "network_args = ["
        + ", ".join(
            f'"{a}"'
            for a in (
                "conv_dim=2", "conv_alpha=1", "loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4",
                "down_lr_weight=1,0", "mid_lr_weight=2", "up_lr_weight=cosine",
                f"block_dims={','.join(dims)}",
            )
        )
        + "]",
        "learning_rate = 1e-3", "unet_lr = 1e-3", "text_encoder_lr = 5e-4",
        "multires_noise_iterations = 6", "multires_noise_discount = 0.3", "ip_noise_gamma = 0.1",
        "ip_noise_gamma_random_strength = true", "debiased_estimation_loss = true", 'loss_type = "huber"',
        'huber_schedule = "snr"', "huber_c = 0.1", "min_snr_gamma = 5", "noise_offset = 0.05",
        "adaptive_noise_scale = 0.01", "min_timestep = 0", "max_timestep = 1000",
    ]  # fmt: skip
    lines += [
        f'reg_data_dir = "{(tmp_path / "reg").as_posix()}"', "prior_loss_weight = 0.5", "masked_loss = true",
        f'conditioning_data_dir = "{(tmp_path / "masks").as_posix()}"',
    ]  # fmt: skip
    if sdxl:
        lines += ["v_parameterization = true", "zero_terminal_snr = true", "scale_v_pred_loss_like_noise_pred = true"]
        lines += ['optimizer_type = "AdamWScheduleFree"', 'optimizer_args = ["warmup_steps=1", "weight_decay=0.01"]']
    else:
        lines += ['optimizer_type = "pytorch_optimizer.CAME"', 'optimizer_args = ["weight_decay=0.01"]']
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_toml_with_the_options_trains_and_records_them(tmp_path: Path, family: str) -> None:
    from PIL import Image

    from lib_lora.standalone.models import load_model

    make_dataset(tmp_path / "data", {"2_opt": [(64, 64), (64, 64), (64, 64)]})
    make_dataset(tmp_path / "reg", {"1_person": [(64, 64)] * 2}, seed=2)
    (tmp_path / "masks" / "2_opt").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "2_opt" / f"img{i:02d}.png")
    cfg = build_config(load_toml(_toml(tmp_path, family)), family=family)
    bundle = load_model(cfg.pretrained_model_name_or_path, device="cpu")
    result = train(cfg, bundle, RecordingEvents())
    assert result.status == "done" and all(loss == loss for loss in result.losses)
    tensors, meta = safetensors_io.load(tmp_path / "out" / "opt.safetensors")

    # ss_* as sd-scripts writes them
    assert json.loads(meta["ss_network_args"]) == {
        "conv_dim": "2", "conv_alpha": "1", "loraplus_lr_ratio": "16", "loraplus_text_encoder_lr_ratio": "4",
        "down_lr_weight": "1,0", "mid_lr_weight": "2", "up_lr_weight": "cosine",
        "block_dims": cfg.block_dims, "dropout": None,
    }  # fmt: skip
    assert meta["ss_multires_noise_iterations"] == "6" and meta["ss_multires_noise_discount"] == "0.3"
    assert meta["ss_ip_noise_gamma"] == "0.1" and meta["ss_ip_noise_gamma_random_strength"] == "True"
    assert meta["ss_debiased_estimation"] == "True" and meta["ss_adaptive_noise_scale"] == "0.01"
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_huber_c"]) == ("huber", "snr", "0.1")
    assert meta["ss_min_bucket_reso"] == "None" and meta["ss_max_bucket_reso"] == "None"  # buckets off
    assert not any(key.startswith("ss_vae") for key in meta)  # no separate VAE
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.implementation_version"].startswith(
        "train-lora/"
    )
    assert meta["modelspec.timestep_range"] == "0,1000"
    sdxl = family == "sdxl"
    assert meta["ss_zero_terminal_snr"] == str(sdxl)
    assert meta["modelspec.prediction_type"] == ("v" if sdxl else "epsilon")
    assert meta["ss_base_model_version"] == ("sdxl_base_v1-0" if sdxl else "sd_v1")
    assert (
        meta["ss_num_train_images"] == "6"
        and meta["ss_num_reg_images"] == "2"
        and meta["ss_prior_loss_weight"] == "0.5"
    )
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 2}}
    assert meta["ss_num_batches_per_epoch"] == "6"  # 6 training + 6 reg samples, batch 2
    if sdxl:
        assert (
            meta["ss_optimizer"]
            == "schedulefree.adamw_schedulefree.AdamWScheduleFree(warmup_steps=1,weight_decay=0.01)"
        )
    else:
        assert meta["ss_optimizer"] == "came_pytorch.CAME.CAME(weight_decay=0.01)"

    # block-wise dims: the zero-lr block (down_lr_weight's 2nd entry: SD1 block 1 = down_blocks_0 first
    # layer, SDXL block 2 = input_blocks_1, after the embeddings' entry) has no LoRA, the 8-rank block has rank 8, the rest 4
    ranks: dict[int, set[int]] = {}  # block -> ranks of its Linear / 1x1 LoRAs
    conv_ranks: dict[int, set[int]] = {}  # block -> ranks of its 3x3 conv LoRAs
    for name, tensor in tensors.items():
        if name.startswith("lora_unet") and name.endswith("lora_down.weight"):
            index = blocks.block_index(name[: -len(".lora_down.weight")], sdxl)
            conv3x3 = tensor.dim() == 4 and tensor.shape[-1] == 3
            (conv_ranks if conv3x3 else ranks).setdefault(index, set()).add(tensor.shape[0])
    zero, eight = (2, 5) if sdxl else (1, 4)
    assert zero not in ranks and zero not in conv_ranks
    assert ranks[eight] == {8} and all(r == {4} for i, r in ranks.items() if i != eight)
    assert conv_ranks and all(r == {2} for r in conv_ranks.values())  # conv_dim for every block (no conv_block_dims)

    # LoRA+ and block lrs: the logged groups (first step, constant schedule)
    lrs = json.loads((tmp_path / "out" / "opt-log.jsonl").read_text().splitlines()[0])["lr"]
    mid = 10 if sdxl else 12
    assert lrs[f"unet_block{mid}"] == pytest.approx(2e-3) and lrs[f"unet_block{mid} plus"] == pytest.approx(32e-3)
    assert lrs[f"unet_block{eight}"] == pytest.approx(1e-3) and lrs[f"unet_block{eight} plus"] == pytest.approx(16e-3)
    if not sdxl:  # SDXL's demo preset trains the text encoders too; SD1 always here
        assert lrs["textencoder plus"] == pytest.approx(2e-3)


def test_options_that_cannot_combine_are_refused(tmp_path: Path) -> None:
    from lib_lora.standalone.models import load_model

    make_dataset(tmp_path / "data", {"1_x": [(64, 64)]})
    bundle = load_model("tiny-sd15", device="cpu")
    base = {"train_data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"), "resolution": "64"}
    with pytest.raises(UserError, match="scale_v_pred_loss_like_noise_pred works only with a v-prediction model"):
        train(build_config({**base, "scale_v_pred_loss_like_noise_pred": True}), bundle)
    with pytest.raises(UserError, match="loraplus_lr_ratio needs a learning rate per parameter group"):
        train(build_config({**base, "loraplus_lr_ratio": 16, "optimizer_type": "Adafactor"}), bundle)
    with pytest.raises(UserError, match="block_dims needs 25 numbers"):
        train(build_config({**base, "block_dims": "4,4"}), bundle)
    with pytest.raises(UserError, match="down_lr_weight"):
        train(build_config({**base, "down_lr_weight": "wavy"}), bundle)
    assert not (tmp_path / "out").exists()  # nothing written


def _noise_half_dataset(root: Path, alpha: bool) -> None:
    """64x64 images whose left half is a smooth field and right half random noise; the mask (a file,
    or the alpha channel) is white on the left, black on the right."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "data" / "2_half").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        pixels = np.zeros((64, 64, 4 if alpha else 3), np.uint8)
        pixels[:, :32, :3] = (40 * i, 120, 200)
        pixels[:, 32:, :3] = rng.integers(0, 256, (64, 32, 3))
        if alpha:
            pixels[:, :32, 3] = 255
            pixels[:, 32:, 3] = 0
        Image.fromarray(pixels, "RGBA" if alpha else "RGB").save(root / "data" / "2_half" / f"{i}.png")
        (root / "data" / "2_half" / f"{i}.txt").write_text("half, tag", encoding="utf-8")
        mask = np.zeros((64, 64), np.uint8)
        mask[:, :32] = 255
        Image.fromarray(mask, "L").save(root / "masks" / f"{i}.png")


@pytest.mark.parametrize("source", ["mask folder", "alpha, flipped, not cached"])
def test_masked_loss_gives_the_masked_out_half_zero_gradient(tmp_path: Path, monkeypatch, source: str) -> None:
    from lib_lora.standalone.models import load_model

    alpha = source.startswith("alpha")
    _noise_half_dataset(tmp_path, alpha)
    values = {
        "train_data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"), "resolution": "64",
        "train_batch_size": 3, "max_train_epochs": 1, "seed": 1, "mixed_precision": "no", "learning_rate": 1e-3,
        "loss_type": "smooth_l1",
    }  # fmt: skip
    if alpha:
        values.update(alpha_mask=True, flip_aug=True, cache_latents=False)
    else:
        values.update(masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    bundle = load_model("tiny-sd15", device="cpu")
    grads: list = []
    original = bundle.denoise

    def denoise(*args, **kwargs):
        out = original(*args, **kwargs)
        if out.requires_grad:
            out.register_hook(lambda g: grads.append(g.detach().clone()))
        return out

    monkeypatch.setattr(bundle, "denoise", denoise)
    result = train(build_config(values), bundle, RecordingEvents())
    assert result.status == "done" and len(grads) == 2  # 6 samples, batch 3
    for grad in grads:
        for sample in grad:  # [4, 8, 8] latent: columns 0-3 are the kept half, 4-7 the noise half
            left, right = sample[..., :4].abs().sum(), sample[..., 4:].abs().sum()
            if alpha and float(left) == 0.0:  # a flipped sample: the noise half is on the left
                left, right = right, left
            assert float(right) == 0.0 and float(left) > 0.0
    if alpha:  # flip_aug flipped some samples: the mask went with them
        assert any(float(s[..., :4].abs().sum()) == 0.0 for g in grads for s in g)


def test_masked_loss_refuses_missing_masks(tmp_path: Path) -> None:
    from lib_lora.standalone.models import load_model

    _noise_half_dataset(tmp_path, False)
    (tmp_path / "masks" / "1.png").unlink()
    cfg = build_config(
        {"train_data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"), "resolution": "64",
         "masked_loss": True, "conditioning_data_dir": str(tmp_path / "masks")}
    )  # fmt: skip
    with pytest.raises(UserError, match=r"1 training images have no mask in .*: 1\.png\."):
        train(cfg, load_model("tiny-sd15", device="cpu"))


def test_regularization_folder_trains_mixed_batches_with_prior_loss_weight(tmp_path: Path, monkeypatch) -> None:
    from lib_lora.engine import loop
    from lib_lora.standalone.models import load_model

    make_dataset(tmp_path / "data", {"2_char": [(64, 64), (64, 64)]})
    make_dataset(tmp_path / "reg", {"1_person": [(64, 64)] * 5}, seed=1)
    seen: list = []
    original = loop.batch_loss

    def spy(bundle, batch, *args, **kwargs):
        seen.append(batch.loss_weights.tolist())
        return original(bundle, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "batch_loss", spy)
    cfg = build_config(
        {"train_data_dir": str(tmp_path / "data"), "reg_data_dir": str(tmp_path / "reg"), "output_dir": str(tmp_path / "out"),
         "output_name": "reg", "resolution": "64", "train_batch_size": 2, "max_train_epochs": 1, "seed": 2,
         "prior_loss_weight": 0.5, "mixed_precision": "no"}
    )  # fmt: skip
    result = train(cfg, load_model("tiny-sd15", device="cpu"), RecordingEvents())
    assert result.status == "done"
    # 2 images x 2 repeats = 4 training samples + 4 reg samples (4 of the 5 reg images once) = 4 batches of 2
    assert sorted(w for batch in seen for w in batch) == [0.5] * 4 + [1.0] * 4 and len(seen) == 4
    _, meta = safetensors_io.load(tmp_path / "out" / "reg.safetensors")
    assert meta["ss_num_train_images"] == "4" and meta["ss_num_reg_images"] == "5"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 5}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_char": {"n_repeats": 2, "img_count": 2}}
    assert meta["ss_prior_loss_weight"] == "0.5" and meta["ss_num_batches_per_epoch"] == "4"


def test_schedule_free_saves_the_eval_mode_weights(tmp_path: Path, monkeypatch) -> None:
    from lib_lora.jobs import train as train_job
    from lib_lora.standalone.models import load_model

    make_dataset(tmp_path / "data", {"2_sf": [(64, 64), (64, 64)]})
    built: list = []
    original_build = train_job.build_optimizer

    def build(*args, **kwargs):
        result = original_build(*args, **kwargs)
        built.append(result[0])
        return result

    saves: list = []
    original_save = train_job.save_network

    def save(network, path, *args, **kwargs):
        optimizer = built[-1].optimizer
        ups = [m.lora_up.weight.detach().clone() for m in network]
        saves.append((Path(path).name, optimizer.param_groups[0]["train_mode"], ups))
        return original_save(network, path, *args, **kwargs)

    monkeypatch.setattr(train_job, "build_optimizer", build)
    monkeypatch.setattr(train_job, "save_network", save)
    cfg = build_config(
        {"train_data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"), "output_name": "sf",
         "resolution": "64", "train_batch_size": 1, "max_train_epochs": 2, "save_every_n_epochs": 1, "seed": 4,
         "optimizer_type": "AdamWScheduleFree", "learning_rate": 1e-2, "mixed_precision": "no"}
    )  # fmt: skip
    result = train(cfg, load_model("tiny-sd15", device="cpu"), RecordingEvents())
    assert result.status == "done"
    files = [(name, mode) for name, mode, _ in saves if name.endswith(".safetensors")]
    assert files == [("sf-000001.safetensors", False), ("sf.safetensors", False)]  # every file in eval mode
    optimizer = built[-1].optimizer
    assert optimizer.param_groups[0]["train_mode"]  # back in train mode after each save
    # the saved file holds exactly the eval-mode weights: switch to eval now and compare the last save
    tensors, meta = safetensors_io.load(tmp_path / "out" / "sf.safetensors")
    ups = saves[-1][2]
    assert any(u.abs().sum() > 0 for u in ups)
    saved_ups = [t for name, t in sorted(tensors.items()) if name.endswith("lora_up.weight")]
    assert sorted(float(t.float().abs().sum()) for t in saved_ups) == pytest.approx(
        sorted(float(u.half().float().abs().sum()) for u in ups), rel=1e-3
    )
    assert meta["ss_optimizer"].startswith("schedulefree.adamw_schedulefree.AdamWScheduleFree")
    assert meta["ss_lr_scheduler"] == "constant"


def test_vae_and_network_args_metadata_as_sd_scripts_writes_them(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lib_lora.formats.metadata import legacy_model_hash, sha256_of_file
    from lib_lora.jobs.train_options import network_args_metadata, vae_metadata

    assert vae_metadata(SimpleNamespace(vae_path=None)) == {} and vae_metadata(SimpleNamespace()) == {}
    vae = tmp_path / "my-vae.safetensors"
    vae.write_bytes(bytes(range(256)) * 8192)
    assert vae_metadata(SimpleNamespace(vae_path=str(vae))) == {
        "ss_vae_name": "my-vae.safetensors", "ss_vae_hash": legacy_model_hash(vae), "ss_new_vae_hash": sha256_of_file(vae),
    }  # fmt: skip
    base = {"train_data_dir": "d"}
    # typed values kept ("2", "1e-4"), settings from fields written as typed ("2", not "2.0"), dropout added
    typed = build_config({**base, "network_args": ["conv_dim=2", "conv_alpha=1.0", "loraplus_lr_ratio=16"]})
    assert network_args_metadata(typed) == {
        "conv_dim": "2",
        "conv_alpha": "1.0",
        "loraplus_lr_ratio": "16",
        "dropout": None,
    }
    fields_only = build_config({**base, "conv_dim": 4, "conv_alpha": 2.0, "network_dropout": 0.1})
    assert network_args_metadata(fields_only) == {"conv_dim": "4", "conv_alpha": "2", "dropout": 0.1}
    assert network_args_metadata(build_config(base)) == {}
