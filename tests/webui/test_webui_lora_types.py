"""Our stand-in of the webui's built-in Lora computes each network type's weight change by the
webui 1.10.1's rules (network_lora / network_hada / network_lokr, ``finalize_updown``: alpha / dim,
DoRA per input column, multiplier) — and that equals the engine's for every type, DoRA included.
(The same comparison against the real extensions-builtin/Lora code is run outside the tree.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_lora.engine.lora_module import make_module

CASES = [
    ("lora", {}), ("lora", {"use_tucker": True}), ("loha", {}), ("loha", {"use_tucker": True}),
    ("lokr", {"factor": 4}), ("lokr", {"factor": 4, "use_tucker": True}), ("lokr", {"factor": 8, "full_matrix": True}),
    ("lokr", {"factor": 4, "decompose_both": True, "rank": 1}),
]  # fmt: skip
HOSTS = {
    "linear": lambda: torch.nn.Linear(64, 96),
    "conv3x3": lambda: torch.nn.Conv2d(32, 48, 3, padding=1),
    "conv1x1": lambda: torch.nn.Conv2d(32, 48, 1),
}


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize(("algo", "options"), CASES)
def test_stub_weight_change_is_the_engines(webui, tmp_path: Path, algo: str, options: dict, dora: bool) -> None:
    import networks  # the stand-in, on sys.path inside the webui fixture

    for host_name, make_host in HOSTS.items():
        host = make_host()
        opts = dict(options)
        rank = opts.pop("rank", 4)
        module = make_module(algo, "k", host, "linear" if host_name == "linear" else "conv", rank, 2.0, dora_wd=dora,
                             multiplier=0.7, **opts)  # fmt: skip
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, tensor in module.file_tensors().items():
                if name == "dora_scale":
                    tensor.mul_(1 + 0.3 * torch.rand(tensor.shape, generator=g))
                elif name != "alpha":
                    tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            tensors = {k: v.detach().clone() for k, v in module.file_tensors().items()}
            stub = networks._updown(tensors, host.weight.detach(), 0.7)
            ours = module.delta_weight()
        assert (stub - ours).abs().max().item() <= 1e-5, (host_name, algo, options, dora)
