"""S-CFG's safety nets on the A1111 route (tests/webui_harness.py; the stand-in A1111 v1.10.1, the small real U-Net,
Euler): an exception of each kind raised inside the capture's stash, processing and fold, the step's maps and the
rate (tests/faults.py) leaves the generation finished, equal to the WebUI's own plain-CFG image, with one notice
naming the failure and nothing installed, and the next disabled generation is the WebUI's image bit for bit; a
KeyboardInterrupt still leaves the generation, and S-CFG with it. And the direction of the guidance where the
rate is not 1."""

from __future__ import annotations

import pytest
import torch
import webui_harness as H
from conftest import hook_count
from faults import KINDS, SITES, inject

from scfg_ext.webui import infotext

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, STEPS = (16, 16), 2


def emb(seed: int, tokens: int = 77) -> torch.Tensor:
    return torch.randn(tokens, 768, generator=torch.Generator().manual_seed(seed))


PROMPT, UNCOND = [[(emb(1), 1.0)]], [emb(4)]


@pytest.fixture(scope="module")
def webui():
    return H.load_webui()


@pytest.fixture(scope="module")
def txt2img(webui):
    return H.build_runner(webui)


@pytest.fixture(scope="module")
def model(small_unet):
    return H.sd_model(small_unet)


def generate(webui, runner, model, enabled=True, **kw):
    kw = {"size": SIZE, "steps": STEPS, **kw}
    if runner is None:
        with H.extension_absent(webui):
            return H.generate(webui, None, model, PROMPT, UNCOND, **kw)
    return H.generate(webui, runner, model, PROMPT, UNCOND, args=H.script_args(runner, enabled=enabled), **kw)


@pytest.fixture(scope="module")
def plain(webui, model):
    """The WebUI's image without the extension."""
    return generate(webui, None, model)[0]


class Installed:
    """What S-CFG installs, seen at every denoiser call through the WebUI's callback."""

    def __init__(self, unet):
        self.unet, self.seen = unet, []

    def __call__(self, params):
        d = params.denoiser
        self.seen.append((d, d.sampler, hook_count(self.unet)))


@pytest.fixture
def installed(webui, small_unet):
    spy = Installed(small_unet)
    webui.script_callbacks.on_cfg_denoiser(spy)
    yield spy
    webui.script_callbacks.remove_callbacks_for_function(spy)


def assert_nothing_left(webui, small_unet, installed):
    assert installed.seen and all(hooks > 0 for _, _, hooks in installed.seen)  # S-CFG was on
    denoiser, sampler, _ = installed.seen[0]
    assert "combine_denoised" not in vars(denoiser) and "launch_sampling" not in vars(sampler)
    assert hook_count(small_unet) == 0 and webui.script_module.SESSION.current is None


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("site", list(SITES))
def test_a_fault_leaves_plain_cfg_and_a_notice(webui, txt2img, model, plain, small_unet, installed, monkeypatch,
                                               site, kind):
    errors = __import__("modules.errors", fromlist=["x"])
    errors.reports.clear()
    error = KINDS[kind]()
    calls = inject(monkeypatch, site, error)
    on, p = generate(webui, txt2img, model)
    assert calls  # the fault was raised
    assert torch.equal(on, plain)  # every step fell back to the WebUI's own CFG
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert f"{kind}: {error}" in notice, notice
    assert [c for c in p.comments if "S-CFG" in c] == [notice]  # one notice
    assert not errors.reports  # nothing escaped into the WebUI's error reports
    assert_nothing_left(webui, small_unet, installed)
    monkeypatch.undo()
    off, p = generate(webui, txt2img, model, enabled=False)
    assert torch.equal(off, plain) and infotext.NOTICE_KEY not in p.extra_generation_params


def test_a_keyboard_interrupt_leaves_the_generation(webui, txt2img, model, plain, small_unet, installed, monkeypatch):
    """Not an error S-CFG may swallow: it goes up through sampling, and S-CFG is gone all the same."""
    inject(monkeypatch, "masks", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        generate(webui, txt2img, model)
    assert_nothing_left(webui, small_unet, installed)
    monkeypatch.undo()
    off, _ = generate(webui, txt2img, model, enabled=False)
    assert torch.equal(off, plain)


def test_guidance_follows_the_rate_in_direction(webui, txt2img, model, monkeypatch):
    """A rate of 2 everywhere makes S-CFG's step ``uncond + 2 s (cond - uncond)``: the WebUI's plain CFG at twice
    the scale. Guided away from the prompt (cond and uncond swapped in ``cond + (rate - 1)(cond - uncond)``) it is
    not."""
    import scfg_ext.masks as masks

    monkeypatch.setattr(masks, "rate_deviation", lambda sums, stacked, *a, **kw: torch.ones_like(stacked[:, :1]))
    on, p = generate(webui, txt2img, model, cfg_scale=5.0)
    doubled, _ = generate(webui, None, model, cfg_scale=10.0)
    single, _ = generate(webui, None, model, cfg_scale=5.0)
    assert infotext.NOTICE_KEY not in p.extra_generation_params
    assert (doubled - single).abs().max() > 0.1  # the scale matters
    assert (on - doubled).abs().max() <= 1e-4 * doubled.abs().max(), (on - doubled).abs().max()
