"""Our LoRA/LoCon, LoHa and LoKr modules (each with and without DoRA) against LyCORIS's own modules.

The oracle is the ``lycoris-lora`` package (a test-only dependency, pinned). Both modules get the same
weights (ours copied into LyCORIS's, tensor by tensor, by their file names), then their forward
output and their merged weight change must agree in fp32 (atol 1e-5) on a Linear, a 3x3 conv and a
1x1 conv. DoRA runs with LyCORIS ``wd_on_output=False`` (the input axis, the only one we write).

Two LyCORIS behaviours are pinned rather than copied: its ``get_diff_weight`` applies ``alpha / rank``
twice for LoHa and LoKr (its own forward, the webui and Forge apply it once: so do we), so the merged
comparison for those runs at alpha = rank and the scale-once rule is checked on LyCORIS's forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

lycoris = pytest.importorskip("lycoris", reason="the LyCORIS oracle needs the lycoris-lora dev dependency")
from lycoris.functional import factorization as lycoris_factorization  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

from lib_lora.engine import lora_math  # noqa: E402
from lib_lora.engine.lora_module import make_module  # noqa: E402

ATOL = 1e-5
HOSTS = {
    "linear": lambda: nn.Linear(64, 96),
    "conv3x3": lambda: nn.Conv2d(32, 48, 3, stride=1, padding=1),
    "conv1x1": lambda: nn.Conv2d(32, 48, 1),
}
LYCORIS = {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}
# (algo, options): the variants each type has
VARIANTS = [
    ("lora", {}),
    ("lora", {"use_tucker": True}),
    ("loha", {}),
    ("loha", {"use_tucker": True}),
    ("lokr", {"factor": 4}),
    ("lokr", {"factor": 4, "rank": 16}),  # rank >= half the large factor: full-matrix lokr_w2
    ("lokr", {"factor": 8, "decompose_both": True, "rank": 1}),
    ("lokr", {"factor": 4, "use_tucker": True}),
    ("lokr", {"factor": -1, "full_matrix": True}),
]


def _input(host_name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if host_name == "linear":
        return torch.randn(2, 5, 64, generator=g)
    return torch.randn(2, 32, 7, 7, generator=g)


def _pair(algo: str, options: dict, host_name: str, dora: bool, alpha: float | None):
    torch.manual_seed(0)
    host = HOSTS[host_name]()
    other = copy.deepcopy(host)
    kind = "linear" if host_name == "linear" else "conv"
    options = dict(options)
    rank = options.pop("rank", 4)
    ours = make_module(algo, "k", host, kind, rank, alpha, dora_wd=dora, **options)
    theirs = LYCORIS[algo](
        "k", other, 1.0, lora_dim=rank, alpha=alpha, weight_decompose=dora, wd_on_out=False, **options
    )
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, tensor in ours.file_tensors().items():
            if name == "alpha":
                continue
            if name == "dora_scale":  # the init (the host's column norms), perturbed
                tensor.mul_(1 + 0.3 * torch.rand(tensor.shape, generator=g))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.2)
            target = theirs
            for part in name.split("."):
                target = getattr(target, part)
            assert tuple(target.shape) == tuple(tensor.shape), f"{name}: LyCORIS lays it out as {tuple(target.shape)}"
            target.copy_(tensor)
    return host, ours, other, theirs


def _forward(host, module, x):
    module.apply() if hasattr(module, "apply") and not hasattr(module, "apply_to") else module.apply_to()
    try:
        with torch.no_grad():
            return host(x)
    finally:
        module.restore()


@pytest.mark.parametrize("dora", [False, True], ids=["plain", "dora"])
@pytest.mark.parametrize("host_name", list(HOSTS))
@pytest.mark.parametrize(
    ("algo", "options"), VARIANTS, ids=[f"{a}-{'-'.join(map(str, o.items()))}" for a, o in VARIANTS]
)
def test_same_forward_and_merged_delta_as_lycoris(algo: str, options: dict, host_name: str, dora: bool) -> None:
    rank = options.get("rank", 4)
    host, ours, other, theirs = _pair(algo, options, host_name, dora, alpha=float(rank))
    assert set(ours.file_tensors()) - {"alpha"} == {k for k in theirs.custom_state_dict() if k != "alpha"}, (
        "the same tensors as LyCORIS writes"
    )
    x = _input(host_name)
    ours_out, theirs_out = _forward(host, ours, x), _forward(other, theirs, x)
    assert (ours_out - theirs_out).abs().max().item() <= ATOL
    with torch.no_grad():
        theirs_delta = theirs.get_merged_weight(multiplier=1.0, shape=other.weight.shape)[0] - other.weight
        ours_delta = ours.delta_weight()
    assert ours_delta.shape == host.weight.shape
    assert (ours_delta - theirs_delta.reshape(ours_delta.shape)).abs().max().item() <= ATOL
    assert ours_delta.abs().max().item() > 1e-3, "a change that is not zero"


@pytest.mark.parametrize("host_name", list(HOSTS))
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_alpha_scales_once_as_lycoris_forward(algo: str, host_name: str) -> None:
    options = {"factor": 4} if algo == "lokr" else {}
    host, ours, other, theirs = _pair(algo, options, host_name, dora=False, alpha=2.0)  # scale 0.5
    assert ours.scale == 0.5
    x = _input(host_name)
    assert (_forward(host, ours, x) - _forward(other, theirs, x)).abs().max().item() <= ATOL
    with torch.no_grad():
        base = other(x)
    if algo == "lora":  # LyCORIS's merge agrees for LoRA
        delta = theirs.get_diff_weight(multiplier=1.0, shape=other.weight.shape)[0].reshape(host.weight.shape)
        assert (ours.delta_weight() - delta).abs().max().item() <= ATOL
    else:  # its merge applies the scale twice: ours is the forward's (and the webui's) once
        delta = theirs.get_diff_weight(multiplier=1.0, shape=other.weight.shape)[0].reshape(host.weight.shape)
        assert torch.allclose(ours.delta_weight() * 0.5, delta, atol=ATOL)
    assert base.shape == x.shape[:-1] + (96,) if host_name == "linear" else True


def test_lora_with_dora_and_alpha_matches_lycoris() -> None:
    for host_name in HOSTS:
        host, ours, other, theirs = _pair("lora", {}, host_name, dora=True, alpha=2.0)
        x = _input(host_name)
        assert (_forward(host, ours, x) - _forward(other, theirs, x)).abs().max().item() <= ATOL


def test_dora_scale_is_input_axis() -> None:
    for host_name, shape in (("linear", (1, 64)), ("conv3x3", (1, 32, 1, 1)), ("conv1x1", (1, 32, 1, 1))):
        host = HOSTS[host_name]()
        module = make_module("lokr", "k", host, "linear" if host_name == "linear" else "conv", 4, 4, dora_wd=True)
        assert tuple(module.dora_scale.shape) == shape
        # zero change at init: the magnitude equals the host's column norms, so W' == W
        assert module.delta_weight().abs().max().item() < 1e-5


@pytest.mark.parametrize("factor", [-1, 1, 2, 4, 8, 16, 3])
def test_factorization_matches_lycoris(factor: int) -> None:
    for dim in (1, 2, 12, 127, 128, 250, 320, 360, 512, 640, 768, 960, 1024, 1280, 2048, 2560, 5120, 10240):
        assert lora_math.factorization(dim, factor) == tuple(lycoris_factorization(dim, factor)), (dim, factor)
