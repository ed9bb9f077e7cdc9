"""The miniature joint-attention diffusion transformer: Lumina 2's and Z-Image's network (Forge Neo
``backend/nn/lumina.py`` ``NextDiT``), small, for the miniature world.

What is kept of NextDiT, because S-CFG's capture depends on it:

* the caption is embedded (``cap_embedder``: RMSNorm, Linear) and refined alone (``context_refiner``), the image
  tokens are refined alone (``noise_refiner``); then the main ``layers[i]`` run one **joint** attention over
  ``[caption | image]``, with no mask: every image query attends to the text keys and the image keys at once;
* ``JointAttention`` projects q, k, v with one fused ``qkv``, RMS-normalises q and k per head, rotates them with a
  3-axis rotary embedding (caption position ``(i, 0, 0)``, image token ``(Lc, h, w)``) and calls the module-level
  ``attention_function(q, k, v, heads, mask, skip_reshape=True)`` on ``(B, H, L, D)``, as NextDiT calls Forge's;
  the refiners call it too, with the caption or the image tokens alone;
* Lumina's block: RMSNorms before and after the attention and the SwiGLU feed-forward, modulation by the
  timestep (scale, tanh gate); patches of ``patch`` x ``patch`` latent cells in row-major order (h, then w).

Left out: grouped key/value heads (Forge expands them to all heads before the call), Z-Image's pad tokens
(``pad_tokens_multiple``: None, as Lumina 2), the caption mask (Forge passes none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dit import attention_function, patchify, timestep_features, unpatchify

__all__ = ["MiniatureNextDiT", "attention_function"]


def rope_angles(positions: torch.Tensor, axes: tuple[int, ...], theta: float = 10000.0) -> torch.Tensor:
    """``(L, D/2)`` rotation angles of ``positions`` ``(L, len(axes))``: axis ``a`` rotates ``axes[a]`` channels."""
    parts = []
    for a, dim in enumerate(axes):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device).float() / dim)
        parts.append(positions[:, a, None].float() * freqs[None])
    return torch.cat(parts, -1)


def apply_rope(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs ``(t[..., 2j], t[..., 2j + 1])`` of ``t`` ``(B, L, H, D)`` by ``angles`` (L, D/2)."""
    pairs = t.float().unflatten(-1, (-1, 2))
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 0] * sin + pairs[..., 1] * cos], -1)
    return out.flatten(-2).type_as(t)


class JointAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n_local_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)

    def forward(self, x, x_mask, freqs_cis, transformer_options=None):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_local_heads, self.head_dim).unbind(2)
        q, k = apply_rope(self.q_norm(q), freqs_cis), apply_rope(self.k_norm(k), freqs_cis)
        out = attention_function(q.movedim(1, 2), k.movedim(1, 2), v.movedim(1, 2), self.n_local_heads, x_mask,
                                 skip_reshape=True)
        return self.out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class JointTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, modulation: bool = True):
        super().__init__()
        self.attention = JointAttention(dim, heads)
        self.feed_forward = FeedForward(dim, 4 * dim)
        self.attention_norm1, self.attention_norm2 = nn.RMSNorm(dim, eps=1e-5), nn.RMSNorm(dim, eps=1e-5)
        self.ffn_norm1, self.ffn_norm2 = nn.RMSNorm(dim, eps=1e-5), nn.RMSNorm(dim, eps=1e-5)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim)) if modulation else None

    def forward(self, x, x_mask, freqs_cis, adaln_input=None):
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), x_mask, freqs_cis))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input)[:, None].chunk(4, -1)
        attended = self.attention(self.attention_norm1(x) * (1 + scale_msa), x_mask, freqs_cis)
        x = x + gate_msa.tanh() * self.attention_norm2(attended)
        return x + gate_mlp.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp)))


class MiniatureNextDiT(nn.Module):
    """``net(x (B, C, H, W), timesteps (B,), context=(B, T, context_dim)) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, patch: int = 2, dim: int = 64, depth: int = 6,
                 heads: int = 4, context_dim: int = 64, refiner_depth: int = 1, axes: tuple[int, ...] = (4, 6, 6)):
        super().__init__()
        assert sum(axes) == dim // heads, "the rope axes must cover the head dimension"
        self.patch_size, self.pad_tokens_multiple, self.out_channels, self.dim = patch, None, out_channels, dim
        self.axes = tuple(axes)
        self.x_embedder = nn.Linear(in_channels * patch * patch, dim)
        self.cap_embedder = nn.Sequential(nn.RMSNorm(context_dim, eps=1e-5), nn.Linear(context_dim, dim))
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.noise_refiner = nn.ModuleList(JointTransformerBlock(dim, heads) for _ in range(refiner_depth))
        self.context_refiner = nn.ModuleList(JointTransformerBlock(dim, heads, False) for _ in range(refiner_depth))
        self.layers = nn.ModuleList(JointTransformerBlock(dim, heads) for _ in range(depth))
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))
        self.final_linear = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, x, timesteps, context=None, **kwargs):
        tokens, (h, w) = patchify(x, self.patch_size)
        size, image = x.shape[-2:], self.x_embedder(tokens)
        t = self.t_embedder(timestep_features(timesteps, self.dim).to(image.dtype))
        caption = self.cap_embedder(context)
        lc = caption.shape[1]
        rows, cols = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        cap_pos = torch.stack([torch.arange(lc, device=x.device), *([torch.zeros(lc, device=x.device)] * 2)], -1)
        img_pos = torch.stack([torch.full((h * w,), lc, device=x.device), rows.flatten(), cols.flatten()], -1)
        cap_rope, img_rope = rope_angles(cap_pos, self.axes), rope_angles(img_pos, self.axes)
        for layer in self.context_refiner:
            caption = layer(caption, None, cap_rope)
        for layer in self.noise_refiner:
            image = layer(image, None, img_rope, t)
        joint, joint_rope = torch.cat([caption, image], 1), torch.cat([cap_rope, img_rope])
        for layer in self.layers:
            joint = layer(joint, None, joint_rope, t)
        scale = self.final_modulation(t)[:, None]
        out = self.final_linear(self.norm_final(joint[:, lc:]) * (1 + scale))
        return unpatchify(out, (h, w), self.patch_size, size)
