"""Stand-in for modules/sd_hijack_optimizations.py @ A1111 v1.10.1 (82a973c) (+ the "None" forward from
modules/hypernetworks/hypernetwork.py).

Kept: SdOptimization (apply/undo assign the CLASS attribute ldm.modules.attention.CrossAttention.forward),
the sdp / sdp-no-mem / Doggettx classes and their CrossAttention forwards, and the original
attention_CrossAttention_forward that undo() restores. Hypernetworks are modelled as "none loaded"
(context_k = context_v = context). `available_vram` replaces get_available_vram() so tests can force
Doggettx slicing. Trimmed: xformers, sub-quadratic, V1, InvokeAI, the VAE AttnBlock forwards, sgm.
Requires the `ldm` package (stable-diffusion-sdkit) only when apply()/undo() are called.
"""

import math

import torch
from einops import rearrange
from torch import einsum

from modules import shared

# stand-in for get_available_vram(): bytes Doggettx thinks are free (huge -> one slice)
available_vram = 1 << 62


def default(val, d):
    return val if val is not None else d


def apply_hypernetworks(hypernetworks, context, layer=None):
    # mirrors modules/hypernetworks/hypernetwork.py @ v1.10.1 (82a973c) with no hypernetworks loaded
    return context, context


# mirrors modules/hypernetworks/hypernetwork.py @ v1.10.1 (82a973c): attention_CrossAttention_forward
# (what SdOptimization.undo() installs, i.e. the forward when cross_attention_optimization is "None")
def attention_CrossAttention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads

    q = self.to_q(x)
    context = default(context, x)

    context_k, context_v = apply_hypernetworks(shared.loaded_hypernetworks, context, self)
    k = self.to_k(context_k)
    v = self.to_v(context_v)

    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))

    sim = einsum("b i d, b j d -> b i j", q, k) * self.scale

    if mask is not None:
        raise NotImplementedError("stand-in: attention masks are not modelled")

    attn = sim.softmax(dim=-1)

    out = einsum("b i j, b j d -> b i d", attn, v)
    out = rearrange(out, "(b h) n d -> b n (h d)", h=h)
    return self.to_out(out)


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): split_cross_attention_forward (Doggettx)
def split_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads

    q_in = self.to_q(x)
    context = default(context, x)

    context_k, context_v = apply_hypernetworks(shared.loaded_hypernetworks, context)
    k_in = self.to_k(context_k)
    v_in = self.to_v(context_v)

    dtype = q_in.dtype
    if shared.opts.upcast_attn:
        q_in, k_in, v_in = q_in.float(), k_in.float(), v_in if v_in.device.type == "mps" else v_in.float()

    k_in = k_in * self.scale

    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q_in, k_in, v_in))

    r1 = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)

    mem_free_total = available_vram

    gb = 1024**3
    tensor_size = q.shape[0] * q.shape[1] * k.shape[1] * q.element_size()
    modifier = 3 if q.element_size() == 2 else 2.5
    mem_required = tensor_size * modifier
    steps = 1

    if mem_required > mem_free_total:
        steps = 2 ** (math.ceil(math.log(mem_required / mem_free_total, 2)))

    if steps > 64:
        max_res = math.floor(math.sqrt(math.sqrt(mem_free_total / 2.5)) / 8) * 64
        raise RuntimeError(
            f"Not enough memory, use lower resolution (max approx. {max_res}x{max_res}). "
            f"Need: {mem_required / 64 / gb:0.1f}GB free, Have:{mem_free_total / gb:0.1f}GB free"
        )

    slice_size = q.shape[1] // steps
    for i in range(0, q.shape[1], slice_size):
        end = min(i + slice_size, q.shape[1])
        s1 = einsum("b i d, b j d -> b i j", q[:, i:end], k)

        s2 = s1.softmax(dim=-1, dtype=q.dtype)
        del s1

        r1[:, i:end] = einsum("b i j, b j d -> b i d", s2, v)
        del s2

    r1 = r1.to(dtype)

    r2 = rearrange(r1, "(b h) n d -> b n (h d)", h=h)

    return self.to_out(r2)


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): scaled_dot_product_attention_forward (sdp)
def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    batch_size, sequence_length, inner_dim = x.shape

    if mask is not None:
        raise NotImplementedError("stand-in: attention masks are not modelled")

    h = self.heads
    q_in = self.to_q(x)
    context = default(context, x)

    context_k, context_v = apply_hypernetworks(shared.loaded_hypernetworks, context)
    k_in = self.to_k(context_k)
    v_in = self.to_v(context_v)

    head_dim = inner_dim // h  # NB: from x's channels (query_dim), as upstream
    q = q_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    k = k_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    v = v_in.view(batch_size, -1, h, head_dim).transpose(1, 2)

    dtype = q.dtype
    if shared.opts.upcast_attn:
        q, k, v = q.float(), k.float(), v.float()

    hidden_states = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False
    )

    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, h * head_dim)
    hidden_states = hidden_states.to(dtype)

    hidden_states = self.to_out[0](hidden_states)
    hidden_states = self.to_out[1](hidden_states)
    return hidden_states


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): scaled_dot_product_no_mem_attention_forward
def scaled_dot_product_no_mem_attention_forward(self, x, context=None, mask=None, **kwargs):
    with torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=True, enable_mem_efficient=False):
        return scaled_dot_product_attention_forward(self, x, context, mask)


def _ldm_attention():
    import ldm.modules.attention

    return ldm.modules.attention


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): SdOptimization (ldm only)
class SdOptimization:
    name: str = None
    label: str | None = None
    cmd_opt: str | None = None
    priority: int = 0

    def title(self):
        if self.label is None:
            return self.name

        return f"{self.name} - {self.label}"

    def is_available(self):
        return True

    def apply(self):
        pass

    def undo(self):
        _ldm_attention().CrossAttention.forward = attention_CrossAttention_forward


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): SdOptimizationSdpNoMem
class SdOptimizationSdpNoMem(SdOptimization):
    name = "sdp-no-mem"
    label = "scaled dot product without memory efficient attention"
    cmd_opt = "opt_sdp_no_mem_attention"
    priority = 80

    def is_available(self):
        return hasattr(torch.nn.functional, "scaled_dot_product_attention") and callable(
            torch.nn.functional.scaled_dot_product_attention
        )

    def apply(self):
        _ldm_attention().CrossAttention.forward = scaled_dot_product_no_mem_attention_forward


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): SdOptimizationSdp
class SdOptimizationSdp(SdOptimizationSdpNoMem):
    name = "sdp"
    label = "scaled dot product"
    cmd_opt = "opt_sdp_attention"
    priority = 70

    def apply(self):
        _ldm_attention().CrossAttention.forward = scaled_dot_product_attention_forward


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): SdOptimizationDoggettx
class SdOptimizationDoggettx(SdOptimization):
    name = "Doggettx"
    cmd_opt = "opt_split_attention"
    priority = 90

    def apply(self):
        _ldm_attention().CrossAttention.forward = split_cross_attention_forward


# mirrors modules/sd_hijack_optimizations.py @ v1.10.1 (82a973c): list_optimizers(res) (subset)
def list_optimizers(res):
    res.extend([SdOptimizationSdpNoMem(), SdOptimizationSdp(), SdOptimizationDoggettx()])
