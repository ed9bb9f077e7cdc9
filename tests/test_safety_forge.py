"""S-CFG's safety nets on the Forge routes (tests/forge_harness.py: Forge @ dfdcbab's denoiser, U-Net patcher and
``sampling_function``), with the small real U-Net and with an Anima-type diffusion transformer (the miniature DiT,
Forge Neo's route): a fault of each kind at each site of tests/faults.py leaves Forge's own image with one notice
naming it and nothing installed, the next disabled generation is Forge's image bit for bit, and a
KeyboardInterrupt leaves the generation. Also the direction of the guidance where the rate is not 1, and the
by-order fallback that tells ``AND`` sub-prompts apart when their contexts can't."""

from __future__ import annotations

import pytest
import torch
import webui_harness as H
from conftest import hook_count
from faults import KINDS, SITES, inject, kinds_for
from forge_harness import forge_model, forge_webui
from forge_harness import generate as forge_generate

from scfg_ext.webui import forge, infotext

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, STEPS = (16, 16), 2


def emb(seed: int, tokens: int = 77) -> torch.Tensor:
    return torch.randn(tokens, 768, generator=torch.Generator().manual_seed(seed))


PROMPT, UNCOND = [[(emb(1), 1.0)]], [emb(4)]
AND = [[(emb(1), 1.0), (emb(2), 0.6)]]
AND_TEXT = "a horse AND " + "cat " * 20  # the stand-in U-Net gives the repeated "cat" cells of its own


@pytest.fixture(scope="module")
def webui():
    with forge_webui() as webui:
        yield webui


@pytest.fixture(scope="module")
def txt2img(webui):
    return H.build_runner(webui)


@pytest.fixture(scope="module")
def unet_route(small_unet):
    return small_unet, forge_model(small_unet), None


@pytest.fixture(scope="module")
def dit_route():
    """Forge Neo with an Anima-type DiT (random weights, CLIP-wide context), whose q and k are taken in its
    module's ``attention_function``."""
    from scfg_ext.miniature import dit
    from scfg_ext.miniature.dit import MiniatureDiT

    torch.manual_seed(0)
    net = MiniatureDiT(dim=32, depth=2, heads=4, context_dim=768).eval().requires_grad_(False)
    return net, forge_model(net), dit


PLAIN = {}  # route -> Forge's image without the extension


@pytest.fixture(params=["U-Net", "DiT"])
def route(request, webui):
    """(network, model, the DiT's module or None, Forge's image without the extension)."""
    net, model, module = request.getfixturevalue("unet_route" if request.param == "U-Net" else "dit_route")
    if request.param not in PLAIN:
        PLAIN[request.param] = generate(webui, None, model)[0]
    plain = PLAIN[request.param]
    function = module.attention_function if module is not None else None
    yield net, model, module, plain
    assert hook_count(net) == 0 and webui.script_module.SESSION.current is None
    assert model.forge_objects_after_applying_lora.unet.model_options == {"transformer_options": {}}
    if module is not None:
        assert module.attention_function is function


def generate(webui, runner, model, enabled=True, prompts=PROMPT, **kw):
    kw = {"size": SIZE, "steps": STEPS, **kw}
    if runner is None:
        with H.extension_absent(webui):
            return forge_generate(webui, None, model, prompts, UNCOND, **kw)
    return forge_generate(webui, runner, model, prompts, UNCOND, args=H.script_args(runner, enabled=enabled), **kw)


@pytest.mark.parametrize("site, kind", [*kinds_for(SITES), *kinds_for(SITES, start=1)])
def test_a_fault_leaves_forges_image_and_a_notice(webui, txt2img, route, monkeypatch, site, kind):
    net, model, module, plain = route
    errors = __import__("modules.errors", fromlist=["x"])
    errors.reports.clear()
    error = KINDS[kind]()
    hooked = []
    webui.script_callbacks.on_cfg_denoiser(lambda params: hooked.append(hook_count(net)))
    try:
        calls = inject(monkeypatch, site, error)
        on, p = generate(webui, txt2img, model)
    finally:
        webui.script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
        webui.script_callbacks.ordered_callbacks_map.clear()
    assert calls and hooked and all(hooked)  # S-CFG was on, and the fault was raised
    assert torch.equal(on, plain)
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert f"{kind}: {error}" in notice, notice
    assert [c for c in p.comments if "S-CFG" in c] == [notice]
    assert not errors.reports
    monkeypatch.undo()
    off, p = generate(webui, txt2img, model, enabled=False)
    assert torch.equal(off, plain) and infotext.NOTICE_KEY not in p.extra_generation_params


def test_a_keyboard_interrupt_leaves_the_generation(webui, txt2img, route, monkeypatch):
    net, model, module, plain = route
    inject(monkeypatch, "rate", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        generate(webui, txt2img, model)
    assert hook_count(net) == 0 and webui.script_module.SESSION.current is None
    monkeypatch.undo()
    off, _ = generate(webui, txt2img, model, enabled=False)
    assert torch.equal(off, plain)


def test_guidance_follows_the_rate_in_direction(webui, txt2img, unet_route, monkeypatch):
    """A rate of 2 everywhere: Forge's plain CFG at twice the scale (see test_safety_a1111.py)."""
    import scfg_ext.masks as masks

    _, model, _ = unet_route
    monkeypatch.setattr(masks, "rate_deviation", lambda sums, stacked, *a, **kw: torch.ones_like(stacked[:, :1]))
    on, p = generate(webui, txt2img, model, cfg_scale=5.0)
    doubled, _ = generate(webui, None, model, cfg_scale=10.0)
    single, _ = generate(webui, None, model, cfg_scale=5.0)
    assert infotext.NOTICE_KEY not in p.extra_generation_params
    assert (doubled - single).abs().max() > 0.1
    assert (on - doubled).abs().max() <= 1e-4 * doubled.abs().max(), (on - doubled).abs().max()


def test_and_sub_prompts_told_apart_by_order_when_contexts_differ(webui, txt2img, unet_route, monkeypatch):
    """An extension changes the conds in its ``on_cfg_denoiser`` callback after S-CFG's (an embedding tweak):
    the U-Net's contexts then match none S-CFG saw, and the chunks are told apart by Forge's order (sub-prompt
    n-1 first). The word weight on sub-prompt 2 must still act on sub-prompt 2: the image is the one S-CFG gives
    when the same change comes before its callback (matched by context)."""
    _, model, _ = unet_route
    cb = webui.script_callbacks
    original = forge.Backend._subprompt
    matched = []

    def spy(step, context):
        matched.append(any(len(context) >= len(ref) and torch.equal(context[: len(ref)], ref) for ref in step.contexts))
        return original(step, context)

    def tweak(params):
        params.text_cond = params.text_cond * 1.05

    monkeypatch.setattr(forge.Backend, "_subprompt", staticmethod(spy))

    def with_tweak(where, word_weights):
        cb.on_cfg_denoiser(tweak)
        callbacks = cb.callback_map["callbacks_cfg_denoiser"]
        if where == "before":
            callbacks.insert(0, callbacks.pop())
        cb.ordered_callbacks_map.clear()
        matched.clear()
        try:
            out, p = forge_generate(webui, txt2img, model, AND, UNCOND, size=SIZE, steps=STEPS, texts=[AND_TEXT],
                                    args=H.script_args(txt2img, enabled=True, word_weights=word_weights))
        finally:
            cb.remove_callbacks_for_function(tweak)
            cb.ordered_callbacks_map.clear()
        assert matched and all(matched) == (where == "before") and any(matched) == (where == "before")
        assert infotext.NOTICE_KEY not in p.extra_generation_params
        return out

    before, after = with_tweak("before", "cat: 0"), with_tweak("after", "cat: 0")
    assert (after - before).abs().max() <= 1e-4 * before.abs().max(), (after - before).abs().max()
    assert (after - with_tweak("after", "")).abs().max() > 1e-4 * before.abs().max()  # the weight matters
