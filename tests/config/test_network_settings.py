"""Network types as kohya_ss / LyCORIS spell them: a user's TOML with ``network_module =
"lycoris.kohya"`` and ``network_args`` loads; options we cannot honour are refused in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.config import ConfigError, build_config, check_rules, load_toml

KOHYA_SS_LOKR = """
network_module = "lycoris.kohya"
network_dim = 10000
network_alpha = 1
network_args = ["preset=full", "conv_dim=10000", "conv_alpha=1", "use_tucker=False", "rank_dropout=0",
                "bypass_mode=False", "dora_wd=True", "module_dropout=0", "factor=8", "use_cp=False",
                "use_scalar=False", "decompose_both=False", "rank_dropout_scale=False", "algo=lokr",
                "train_norm=False", "wd_on_output=False"]
"""


def _cfg(values: dict):
    return build_config({"train_data_dir": "x", **values}, family="sd1", check=False)


def test_a_kohya_ss_lokr_dora_toml_loads(tmp_path: Path) -> None:
    path = tmp_path / "kohya_ss.toml"
    path.write_text(KOHYA_SS_LOKR)
    cfg = _cfg(load_toml(path))
    check_rules(cfg)
    assert (cfg.algo, cfg.factor, cfg.dora_wd, cfg.conv_dim, cfg.network_dim) == ("lokr", 8, True, 10000, 10000)
    assert cfg.effective_network_module == "lycoris.kohya" and cfg.engine_algo == "lokr"


def test_lycoris_defaults_locon_and_convs_at_network_dim() -> None:
    cfg = _cfg(
        {"network_module": "lycoris.kohya", "network_dim": 16, "network_alpha": 8, "network_args": ["algo=lora"]}
    )
    assert cfg.algo == "locon" and cfg.effective_conv_dim == 16 and cfg.effective_conv_alpha == 8
    plain = _cfg({"network_dim": 16, "network_args": ["conv_dim=4"]})
    assert (
        plain.algo == "lora" and plain.effective_conv_alpha == 1.0 and plain.effective_network_module == "networks.lora"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["algo=lokr", "wd_on_output=True"], "wd_on_output=True' is refused: DoRA must normalise per input column"),
        (["preset=attn-mlp"], "only LyCORIS' default preset (full) is supported"),
        (["bypass_mode=True"], "bypass_mode is not supported"),
        (["algo=ia3"], "algo='ia3' is not supported"),
        (["algo=lokr", "factr=8"], "network_args entry 'factr=8' is not supported"),
        (["algo=loha", "decompose_both=True"], "decompose_both is a LoKr setting"),
        (["algo=lokr", "factor=0"], "factor = 0 is not valid"),
        (["algo=loha", "dropout=0.1"], "network_dropout is not supported with LoHa"),
        (["dora_wd=True", "rank_dropout=0.2"], "rank_dropout is not supported with DoRA"),
    ],
)
def test_refused_in_one_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_rules(_cfg({"network_module": "lycoris.kohya", "network_args": args}))
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("algo", ["lora", "locon", "lokr", "loha"])
def test_each_types_tab_defaults_are_valid_settings(algo: str) -> None:
    from lib_lora.config import NETWORK_TYPE_DEFAULTS

    cfg = _cfg({"algo": algo, **{k: v for k, v in NETWORK_TYPE_DEFAULTS[algo].items() if v is not None}})
    check_rules(cfg)
    assert cfg.engine_algo == ("lora" if algo == "locon" else algo)
    assert (cfg.effective_conv_dim is None) == (algo == "lora")


def test_lora_plus_is_refused_for_a_type_without_up_weights() -> None:
    with pytest.raises(ConfigError, match=r"loraplus_lr_ratio \(LoRA\+\) speeds up LoRA's up weights; LoKr has none"):
        build_config(
            {
                "train_data_dir": "x",
                "network_module": "lycoris.kohya",
                "network_args": ["algo=lokr", "loraplus_lr_ratio=16"],
            }
        )
    cfg = build_config({"train_data_dir": "x", "network_args": ["loraplus_lr_ratio=16"], "dora_wd": True})
    assert cfg.loraplus_lr_ratio == 16
