"""Real Stable Diffusion parts for the demo, the benchmark and the tests (not used inside a WebUI).

* the real ``ldm`` ``UNetModel`` (PyPI ``stable-diffusion-sdkit``, the code A1111 runs for SD1/SD2), built
  from the real SD1.5 / SD2 config values with random weights (no weights can be downloaded here);
* real k-diffusion samplers and ``CompVisDenoiser`` (PyPI ``k-diffusion``);
* ``CFGModel``: a k-diffusion model that batches cond rows first and uncond rows last like A1111's
  ``CFGDenoiser`` and combines with plain CFG or an ``ScfgRun``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

from .capture import Cond, Uncond
from .guidance import ScfgRun, plain_cfg

# models/ldm/stable-diffusion-v1/v1-inference.yaml (unet_config.params), minus use_checkpoint, which A1111
# forces off at load time
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
)
# stablediffusion configs/stable-diffusion/v2-inference-v.yaml: 64-channel heads, linear proj, 1024 context
SD2_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, use_checkpoint=False, legacy=False,
)


def small_config(base: dict, model_channels: int = 32, num_res_blocks: int = 1) -> dict:
    """The same architecture with fewer channels and res blocks, for fast CPU tests."""
    cfg = dict(base, model_channels=model_channels, num_res_blocks=num_res_blocks)
    if "num_head_channels" in cfg:
        cfg["num_head_channels"] = max(model_channels // 8, 4)
    return cfg


def build_unet(config: dict = SD15_UNET, seed: int = 0, dtype=torch.float32, device="cpu") -> torch.nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNetModel(**config)
        _unzero(unet)
    return unet.to(dtype).eval().requires_grad_(False)


def _unzero(module: torch.nn.Module) -> None:
    # ldm zero-initialises the output convs of every res block and transformer (zero_module), which
    # with untrained weights would make the prompt irrelevant (cond == uncond); give them random weights
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.is_meta and not m.weight.any():
            m.reset_parameters()


# SDXL base's U-Net structure (sgm configs/inference/sd_xl_base.yaml): 320/640/1280 channels, 64-channel heads,
# linear projections, 2048-wide context, transformer depth 0/2/10 per level (none at latent/1, 2 at latent/2,
# 10 at latent/4, 10 in the middle block): 60 transformer blocks at latent/4. ldm's UNetModel takes one depth
# for all levels, so it is built with depth 1 and each SpatialTransformer is replaced by one of its level's
# depth. Left out: SDXL's ``label_emb`` (pooled text + size conditioning, one small MLP on the time embedding),
# which ldm's UNetModel does not have and which does not touch attention.
SDXL_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[2, 4],
    num_res_blocks=2, channel_mult=[1, 2, 4], num_head_channels=64, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=2048, use_checkpoint=False, legacy=False,
)
SDXL_DEPTHS = (0, 2, 10)
# the same structure with few channels for tests: 32/64/128 channels, 16-channel heads, 64-wide context
SDXL_SMALL = dict(SDXL_UNET, model_channels=32, num_head_channels=16, context_dim=64, num_res_blocks=1)


def build_sdxl_unet(config: dict = SDXL_UNET, depths=SDXL_DEPTHS, seed: int = 0, dtype=torch.float32,
                    device="cpu") -> torch.nn.Module:
    """ldm's ``UNetModel`` in SDXL's structure: ``config`` (``SDXL_UNET`` or ``SDXL_SMALL``) with the
    transformer depth of each level from ``depths`` (latent/1, latent/2, latent/4; the middle block takes the
    deepest level's)."""
    from ldm.modules.attention import SpatialTransformer

    class DeepSpatialTransformer(SpatialTransformer):
        # ldm's forward indexes one context per block; sgm's (SDXL's) reuses the one context for every block
        def forward(self, x, context=None):
            if not isinstance(context, list):
                context = [context] * len(self.transformer_blocks)
            return super().forward(x, context)

    with torch.device(device):
        unet = build_unet(config, seed=seed, dtype=torch.float32, device=device)
        torch.manual_seed(seed + 1)

        def deepen(seq: torch.nn.Module, factor: int) -> None:
            for j, m in enumerate(seq):
                if isinstance(m, SpatialTransformer):
                    attn = m.transformer_blocks[0].attn1
                    heads = attn.heads
                    dim_head = attn.to_q.out_features // heads
                    level = factor.bit_length() - 1
                    depth = depths[level]
                    seq[j] = DeepSpatialTransformer(m.in_channels, heads, dim_head, depth=depth, use_linear=True,
                                                    context_dim=[config["context_dim"]] * depth, use_checkpoint=False)
                    _unzero(seq[j])

        factor = 1
        for block in unet.input_blocks:
            deepen(block, factor)
            if any(type(m).__name__ == "Downsample" for m in block.modules()):
                factor *= 2
        deepen(unet.middle_block, factor)
        for block in unet.output_blocks:
            deepen(block, factor)
            if any(type(m).__name__ == "Upsample" for m in block.modules()):
                factor //= 2
    return unet.to(dtype).eval().requires_grad_(False)


def import_k_diffusion():
    """Import ``k_diffusion.sampling`` and ``k_diffusion.external`` (the parts A1111 uses).

    ``import k_diffusion`` runs a package ``__init__`` that imports every training submodule (clean-fid,
    kornia, wandb's friends ...), and ``k_diffusion.utils`` imports torchvision for two image helpers that
    sampling never calls; PyPI's torchvision does not load beside the CPU torch wheel used here. So when
    torchvision is missing, the package is entered without running ``__init__`` and that one import is
    satisfied by a placeholder that raises if anything actually uses it. The sampler code is the real one.
    """
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    if importlib.util.find_spec("torchvision") is not None:
        try:
            sampling = importlib.import_module("k_diffusion.sampling")
            return sampling, importlib.import_module("k_diffusion.external")
        except Exception:  # noqa: BLE001 - the package __init__'s training deps missing: enter it without __init__
            for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
                del sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["k_diffusion"] = pkg

    def unavailable(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"torchvision is not installed; torchvision...{name} is unavailable")

    placeholder = {}
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        placeholder[name] = types.ModuleType(name)
        placeholder[name].__path__ = []
        placeholder[name].__getattr__ = unavailable
    placeholder["torchvision.transforms"].functional = placeholder["torchvision.transforms.functional"]
    saved = {name: sys.modules.get(name) for name in placeholder}
    if importlib.util.find_spec("torchvision") is None:
        sys.modules.update(placeholder)
    try:
        importlib.import_module("k_diffusion.utils")
    finally:
        for name, mod in saved.items():  # nobody else should believe torchvision is installed
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    sampling = importlib.import_module("k_diffusion.sampling")
    return sampling, importlib.import_module("k_diffusion.external")


def sdp_attention_forward(self, x, context=None, mask=None, **kwargs):
    """An ldm ``CrossAttention.forward`` with ``scaled_dot_product_attention``, what A1111's "sdp" optimisation
    (``modules/sd_hijack_optimizations.py``) and Forge run: no attention probabilities are ever formed."""
    import torch.nn.functional as F

    h = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, inner = q.shape
    q, k, v = (t.reshape(b, t.shape[1], h, inner // h).transpose(1, 2) for t in (q, k, v))
    if q.device.type == "meta":  # shape-only runs (bench): what scaled_dot_product_attention picks on a CPU
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v.to(q.dtype))[0]
    else:
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))
    return self.to_out(out.transpose(1, 2).reshape(b, n, inner).to(q.dtype))


def use_sdp_attention() -> None:
    """Install ``sdp_attention_forward`` on ldm's ``CrossAttention`` (class-level, as the WebUI does)."""
    from ldm.modules import attention

    attention.CrossAttention.forward = sdp_attention_forward


class DiffusionWrapper(torch.nn.Module):
    """ldm ``DiffusionWrapper`` for ``conditioning_key="crossattn"``: concatenates the c_crossattn list."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class LatentDiffusionStub(torch.nn.Module):
    """What ``CompVisDenoiser`` and the WebUI need of ldm's ``LatentDiffusion``: ``alphas_cumprod``,
    ``apply_model`` (cond dict or tensor, as ldm accepts) and ``model.diffusion_model``.

    The schedule is SD's: linear betas 0.00085..0.012 over 1000 steps (ldm ``make_beta_schedule``).
    """

    def __init__(self, unet: torch.nn.Module, parameterization: str = "eps"):
        super().__init__()
        from ldm.modules.diffusionmodules.util import make_beta_schedule

        self.model = DiffusionWrapper(unet)
        self.parameterization = parameterization
        self.cond_stage_key = "txt"
        betas = torch.as_tensor(make_beta_schedule("linear", 1000, 0.00085, 0.012), dtype=torch.float32)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0))

    @property
    def diffusion_model(self):
        return self.model.diffusion_model

    def apply_model(self, x, t, cond):
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x, t, **cond)


def k_denoiser(unet: torch.nn.Module, parameterization: str = "eps"):
    _, external = import_k_diffusion()
    model = LatentDiffusionStub(unet, parameterization)
    wrap = external.CompVisVDenoiser if parameterization == "v" else external.CompVisDenoiser
    return wrap(model)


class CFGModel(torch.nn.Module):
    """A k-diffusion model ``(x, sigma) -> denoised`` doing CFG the A1111 way: cond rows first, then one
    uncond row per image, one U-Net call; plain CFG, or S-CFG when ``run`` is given."""

    def __init__(self, denoiser, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float,
                 run: ScfgRun | None = None, total_steps: int = 1):
        super().__init__()
        self.denoiser, self.cond, self.uncond, self.cfg_scale = denoiser, cond, uncond, cfg_scale
        self.run, self.total_steps, self.step = run, total_steps, 0

    def forward(self, x, sigma, **kwargs):
        b = x.shape[0]
        if self.run is not None:
            roles = [Cond(i) for i in range(b)] + [Uncond(i) for i in range(b)]
            self.run.begin_step(roles, self.step / self.total_steps)
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        out = self.denoiser(x_in, sigma_in, cond={"c_crossattn": [torch.cat([self.cond, self.uncond])]})
        conds = [[(out[i], 1.0)] for i in range(b)]
        self.step += 1
        if self.run is None:
            return plain_cfg(out[b:], conds, self.cfg_scale)
        return self.run.combine(out[b:], conds, self.cfg_scale)
