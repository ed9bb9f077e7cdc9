"""Class-level ``CrossAttention.forward`` replacements, installed the way A1111's
``modules/sd_hijack_optimizations.py`` @ v1.10.1 (82a973c) installs its optimizations
(``ldm.modules.attention.CrossAttention.forward = fn``). Same signature ``fn(self, x, context=None, mask=None,
**kwargs)``; hypernetworks and ``upcast_attn`` left out (no-ops with their defaults).
"""

from contextlib import contextmanager

import torch
from ldm.modules.attention import CrossAttention

from scfg_ext import testbed

# A1111's "sdp" (and what Forge runs): fused kernel, no probabilities
scaled_dot_product_attention_forward = testbed.sdp_attention_forward


def split_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    # mirrors the shape of sd_hijack_optimizations.split_cross_attention_forward (Doggettx): query slices
    h = self.heads
    q_in = self.to_q(x)
    context = x if context is None else context
    k_in = self.to_k(context) * self.scale
    v_in = self.to_v(context)
    b, n, inner = q_in.shape
    d = inner // h
    q, k, v = (t.reshape(b, t.shape[1], h, d).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], d)
               for t in (q_in, k_in, v_in))
    r1 = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype)
    slice_size = max(1, q.shape[1] // 4)
    for i in range(0, q.shape[1], slice_size):
        end = i + slice_size
        s1 = torch.einsum("b i d, b j d -> b i j", q[:, i:end], k)
        r1[:, i:end] = torch.einsum("b i j, b j d -> b i d", s1.softmax(dim=-1), v)
    r2 = r1.reshape(b, h, n, d).permute(0, 2, 1, 3).reshape(b, n, inner)
    return self.to_out(r2)


@contextmanager
def installed(forward):
    original = CrossAttention.forward
    CrossAttention.forward = forward
    try:
        yield
    finally:
        CrossAttention.forward = original
