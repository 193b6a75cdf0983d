"""Training recovers a planted LoKr and a planted DoRA, as tests/engine/test_planted_lora.py does
for LoRA.

A teacher tiny CLIP text encoder carries a known random network of the type on every q/k/v/out/
fc1/fc2 projection: its "up" tensors random (LoKr, factor 4: the large Kronecker factor; DoRA: a
LoRA's up matrix) and, for DoRA, magnitudes moved up to 30% away from the weight's own column
norms. A student of the same type starts from the usual zero change and is trained with AdamW +
cosine on the teacher's hidden states (LoKr at lr 0.1, as Kronecker factors want a larger rate;
DoRA at 0.01). Stated tolerance, as for LoRA: on held-out captions the student's error falls below
5% of the base model's (measured: LoKr 0.4%, DoRA 2.5%); the student can represent the teacher
exactly, and factorised weights are judged on outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.optim import build_optimizer, build_scheduler
from lib_lora.engine.targets import text_encoder_targets
from support import tiny_models as tm

STEPS = 300
# network options, teacher "up" amplitude, learning rate
CASES = {
    "lokr": ({"algo": "lokr", "factor": 4}, 0.15, 1e-1),
    "dora": ({"algo": "lora", "dora_wd": True}, 0.2, 1e-2),
}


def _held_out(student_te, teacher_te) -> float:
    tokens = tm.tokens(32, seed=999)
    with torch.no_grad():
        return float(
            torch.nn.functional.mse_loss(student_te(tokens).last_hidden_state, teacher_te(tokens).last_hidden_state)
        )


@pytest.mark.parametrize("case", list(CASES))
def test_training_recovers_a_planted_network(case: str) -> None:
    options, amplitude, lr = CASES[case]
    student_te = tm.hf_clip_text_model(seed=0)
    teacher_te = copy.deepcopy(student_te)
    teacher = LoRANetwork(text_encoder_targets(teacher_te, "te"), rank=4, alpha=4, naming={"te": "hf"}, **options)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in teacher:
            for param, role in module.param_roles().values():
                if role == "magnitude":
                    param.mul_(1 + 0.3 * (torch.rand(param.shape, generator=g) - 0.5) * 2)
                elif role == "up":
                    param.copy_(torch.randn(param.shape, generator=g) * amplitude)
    teacher.apply_to()
    torch.manual_seed(1)
    student = LoRANetwork(text_encoder_targets(student_te, "te"), rank=4, alpha=4, naming={"te": "hf"}, **options)
    student.apply_to()
    assert all(m.delta_weight().abs().max() < 1e-6 for m in student), "the student starts at zero change"
    optimizer = build_optimizer("AdamW", [{"params": list(student.parameters())}], lr, ["weight_decay=0.0"]).optimizer
    scheduler = build_scheduler("cosine", optimizer, num_training_steps=STEPS)
    data = torch.Generator().manual_seed(5)
    for _ in range(STEPS):
        tokens = tm.tokens(8, seed=int(torch.randint(0, 1 << 30, (1,), generator=data)))
        with torch.no_grad():
            target = teacher_te(tokens).last_hidden_state
        loss = torch.nn.functional.mse_loss(student_te(tokens).last_hidden_state, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    trained = _held_out(student_te, teacher_te)
    student.disable()
    base = _held_out(student_te, teacher_te)
    assert base > 0.05, base  # the planted network matters
    assert trained < 0.05 * base, (base, trained)
