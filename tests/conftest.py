"""Shared fixtures: real parts (ldm U-Net with random weights, k-diffusion), small where size doesn't matter."""

import os
import sys
from pathlib import Path

import pytest
import torch

try:  # the gradio 4 venv (tests/forge_ui_check.py) has no hypothesis
    from hypothesis import settings
except ImportError:
    settings = None
if settings is not None:
    # CI draws the same property-test examples on every machine (a failure there is then reproducible here);
    # developers' runs keep exploring new ones
    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")

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


@pytest.fixture(scope="module")
def one_thread():
    """Intra-op threads buy nothing on the WebUI tests' tiny tensors, and on a busy 2-core machine OpenMP's
    barrier waits made them 10x slower with 2 threads (measured under load ~7: 257 s with 2 threads, 27 s
    with 1). Used module-wide through ``pytestmark``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def token_weights_seen(monkeypatch):
    """The ``token_weights`` ``ScfgRun`` gives the rate of every cond row it guides, one entry per row."""
    from scfg_ext import masks

    seen = []
    original = masks.rate_deviation

    def spy(sums, stacked, *args, token_weights=None, **kw):
        seen.extend([None] * len(stacked) if token_weights is None else token_weights.unbind(0))
        return original(sums, stacked, *args, token_weights=token_weights, **kw)

    monkeypatch.setattr(masks, "rate_deviation", spy)
    return seen


@pytest.fixture(scope="session")
def k_diffusion():
    sampling, external = testbed.import_k_diffusion()
    return sampling, external


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
