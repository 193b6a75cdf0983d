"""modules/sd_hijack.py: the cross-attention optimisation switch.

``apply_optimizations()`` replaces ``ldm.modules.attention.CrossAttention.forward`` by an
SDP-attention forward (as sd_hijack_optimizations' "sdp" does; it calls ``self.to_q`` etc., so
per-instance patches are seen) and ``undo_optimizations()`` puts ldm's original back. The two give
slightly different numbers, so a test can tell which one is active.
"""

import ldm.modules.attention
import torch.nn.functional as F
from einops import rearrange

attention_CrossAttention_forward = ldm.modules.attention.CrossAttention.forward
current_optimizer = None
calls = {"apply": 0, "undo": 0}


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def apply_optimizations(option=None):
    global current_optimizer
    calls["apply"] += 1
    undo_optimizations(count=False)
    ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward
    current_optimizer = "sdp"
    return "sdp"


def undo_optimizations(count=True):
    global current_optimizer
    if count:
        calls["undo"] += 1
    ldm.modules.attention.CrossAttention.forward = attention_CrossAttention_forward
    current_optimizer = None


class StableDiffusionModelHijack:
    optimization_method = None
    extra_generation_params: dict = {}
    comments: list = []

    def apply_optimizations(self, option=None):
        self.optimization_method = apply_optimizations(option)

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}


model_hijack = StableDiffusionModelHijack()
