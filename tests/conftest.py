"""Shared fixtures: real parts (ldm U-Net with random weights, k-diffusion), small where size doesn't matter."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scfg_ext import testbed  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def small_unet():
    """The real ldm UNetModel with the SD1.5 config's structure (heads, context 768, attention levels),
    fewer channels and one res block per level: 3 latent/4 blocks + the latent/8 middle block."""
    return testbed.build_unet(testbed.small_config(testbed.SD15_UNET), seed=0)


@pytest.fixture(scope="session")
def k_diffusion():
    sampling, external = testbed.import_k_diffusion()
    return sampling, external


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
