"""sd-webui-scfg: Semantic-aware classifier-free guidance (S-CFG, Shen et al., CVPR 2024).

The package top level is pure torch: ``semantic_masks`` and ``guidance_rate`` are the method's math,
``AttentionCapture`` the lean attention capture, ``ScfgRun`` the per-run engine, ``Settings`` the one
validated settings object. WebUI glue lives in ``scfg_ext.webui`` and is imported only by the WebUI script.
"""

from .capture import AttentionCapture, Cond, Uncond, find_attention_layers
from .guidance import ScfgRun, StepMaps, plain_cfg
from .masks import gaussian_kernel, gaussian_smooth, guidance_rate, refine_cross, semantic_masks
from .settings import FIELDS, Field, Settings, SettingsError

__all__ = [
    "FIELDS",
    "AttentionCapture",
    "Cond",
    "Field",
    "ScfgRun",
    "Settings",
    "SettingsError",
    "StepMaps",
    "Uncond",
    "find_attention_layers",
    "gaussian_kernel",
    "gaussian_smooth",
    "guidance_rate",
    "plain_cfg",
    "refine_cross",
    "semantic_masks",
]
