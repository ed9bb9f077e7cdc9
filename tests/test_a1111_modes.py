"""End to end through the stand-in A1111 v1.10.1 pipeline (tests/stand_in, driven by tests/webui_harness.py):
every generation mode the stand-in can express, S-CFG off (bit-identical to the WebUI without the extension)
and on, cleanup after errors, interrupts and "Reload UI", and living next to other CFG extensions.

Real parts: the small ldm U-Net (SD1.5 structure), real k-diffusion samplers, the stand-in's line-by-line
``CFGDenoiser.forward``. Latents are 16x16 (24x24 for the hires pass), 2-4 steps.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import webui_harness as H
from conftest import hook_count

from scfg_ext.capture import AttentionCapture, Cond
from scfg_ext.guidance import ScfgRun
from scfg_ext.webui import infotext

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = (16, 16)
HR_SIZE = (24, 24)
STEPS = 3
LOGGER = "sd-webui-scfg"


def emb(seed: int, tokens: int = 77) -> torch.Tensor:
    """A stand-in text-encoder output (T, 768)."""
    return torch.randn(tokens, 768, generator=torch.Generator().manual_seed(seed))


A, B, C, NEG, NEG2 = emb(1), emb(2), emb(3), emb(4), emb(5)
PROMPT = [[(A, 1.0)]]
UNCOND = [NEG]

# Another CFG extension, loaded before ours: like the CFG-rescale / dynamic-thresholding extensions, it replaces
# combine_denoised on the denoiser instance in process_before_every_sampling and calls what was there before.
NEIGHBOUR = '''
import modules.scripts as scripts


class CfgOffset(scripts.Script):
    calls = []
    installed = []

    def title(self):
        return "CFG offset (test neighbour)"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        offset = getattr(p, "test_cfg_offset", None)
        if offset is None:
            return
        denoiser = p.sampler.model_wrap_cfg
        previous = denoiser.combine_denoised

        def combine_denoised(x_out, conds_list, uncond, cond_scale):
            out = previous(x_out, conds_list, uncond, cond_scale) + offset
            CfgOffset.calls.append((x_out.clone(), cond_scale, out.clone()))
            return out

        denoiser.combine_denoised = combine_denoised
        CfgOffset.installed.append((denoiser, combine_denoised))
'''


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    path = tmp_path_factory.mktemp("other_extension") / "cfg_offset.py"
    path.write_text(NEIGHBOUR)
    return H.load_webui(extra_scripts=[path])


@pytest.fixture(scope="module")
def txt2img(webui):
    return H.build_runner(webui)


@pytest.fixture(scope="module")
def img2img(webui):
    return H.build_runner(webui, is_img2img=True)


@pytest.fixture(scope="module")
def model(small_unet):
    return H.sd_model(small_unet)


@pytest.fixture(scope="module")
def reference(webui, txt2img, model):
    """The standard txt2img generation: WebUI without the extension, and with S-CFG on (default settings)."""
    plain = absent(webui, model, PROMPT, UNCOND)
    on, _ = H.generate(webui, txt2img, model, PROMPT, UNCOND, size=SIZE, steps=STEPS, args=scfg(txt2img))
    return plain, on


@pytest.fixture(autouse=True)
def clean_webui(webui, small_unet):
    """Each test starts from the default options and an idle WebUI; none may leave an error report or a hook."""
    errors = sys.modules["modules.errors"]
    errors.reports.clear()
    yield
    webui.shared.reset_opts()
    webui.shared.state.interrupted = webui.shared.state.skipped = False
    leftover_pass = webui.script_module.SESSION.current
    webui.script_module.SESSION.stop()
    reports = [r["message"] for r in errors.reports]
    errors.reports.clear()
    assert not reports, f"the WebUI reported errors: {reports}"
    assert leftover_pass is None
    assert hook_count(small_unet) == 0


@pytest.fixture
def rates(monkeypatch):
    """Every ``ScfgRun.deviations`` call (one per denoiser call where S-CFG was active and the uncond rows were
    computed): the run, the latent size and the cond rows S-CFG guided (empty set = that step stayed plain)."""
    calls = []
    original = ScfgRun.deviations

    def spy(self, uncond, conds, cfg_scale):
        out = original(self, uncond, conds, cfg_scale)
        calls.append(types.SimpleNamespace(run=self, size=tuple(uncond.shape[-2:]), guided=set(out)))
        return out

    monkeypatch.setattr(ScfgRun, "deviations", spy)
    return calls


@pytest.fixture
def combines(webui, monkeypatch):
    """Every call of the WebUI's own ``CFGDenoiser.combine_denoised``: cond_scale and the x_out it received."""
    cls = sys.modules["modules.sd_samplers_cfg_denoiser"].CFGDenoiser
    calls = []
    original = cls.combine_denoised

    def spy(self, x_out, conds_list, uncond, cond_scale):
        calls.append(types.SimpleNamespace(cond_scale=cond_scale, x_out=x_out.clone()))
        return original(self, x_out, conds_list, uncond, cond_scale)

    monkeypatch.setattr(cls, "combine_denoised", spy)
    return calls


class Probe:
    """Per denoiser call, seen through the WebUI's own callbacks: what is installed (hooks on the U-Net, instance
    attributes on the denoiser and sampler) and the tensors before (``x_out``) and after (``denoised``) the CFG
    combination."""

    def __init__(self, unet):
        self.unet = unet
        self.calls = []

    def on_denoiser(self, params):
        d = params.denoiser
        self.calls.append(types.SimpleNamespace(
            step=d.step, denoiser=d, sampler=d.sampler, hooks=hook_count(self.unet), rows=params.x.shape[0],
            combine="combine_denoised" in vars(d), launch="launch_sampling" in vars(d.sampler),
            x_out=None, denoised=None))

    def on_denoised(self, params):
        self.calls[-1].x_out = params.x.clone()

    def on_after_cfg(self, params):
        self.calls[-1].denoised = params.x.clone()

    def installed(self, call) -> bool:
        return call.hooks > 0 and call.combine and call.launch

    def nothing_installed(self, call) -> bool:
        return call.hooks == 0 and not call.combine and not call.launch


@pytest.fixture
def probe(webui, small_unet):
    cb = webui.script_callbacks
    pr = Probe(small_unet)
    cb.on_cfg_denoiser(pr.on_denoiser)
    cb.on_cfg_denoised(pr.on_denoised)
    cb.on_cfg_after_cfg(pr.on_after_cfg)
    yield pr
    for fn in (pr.on_denoiser, pr.on_denoised, pr.on_after_cfg):
        cb.remove_callbacks_for_function(fn)


@pytest.fixture
def unet_calls(small_unet):
    """Batch size of every U-Net call (a pre-hook of our own, removed afterwards)."""
    sizes = []
    handle = small_unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    yield sizes
    handle.remove()


# -- helpers --------------------------------------------------------------------------------------------------
def scfg(runner, **settings):
    """Script args with S-CFG on (other settings: UI defaults unless given)."""
    return H.script_args(runner, enabled=True, **settings)


def off(runner):
    return H.script_args(runner, enabled=False)


def absent(webui, model, prompts, uncond, **kw):
    """The same generation in a WebUI without the extension: no script, no callbacks of ours."""
    kw = {"size": SIZE, "steps": STEPS, **kw}
    with H.extension_absent(webui):
        return H.generate(webui, None, model, prompts, uncond, **kw)[0]


def run(webui, runner, model, prompts=PROMPT, uncond=UNCOND, args=None, **kw):
    kw = {"size": SIZE, "steps": STEPS, **kw}
    return H.generate(webui, runner, model, prompts, uncond, args=args if args is not None else scfg(runner), **kw)


def differs(a, b, by=1e-2) -> bool:
    return (a - b).abs().max().item() > by


def scfg_comments(p) -> list[str]:
    return [c for c in p.comments if "S-CFG" in c]


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def infotext_of(webui, p) -> str:
    return webui.processing.create_infotext(p, ["a prompt"], [p.seed], [p.seed], all_negative_prompts=[""])


def assert_uninstalled(webui, unet, denoiser, sampler):
    assert "combine_denoised" not in vars(denoiser)
    assert "launch_sampling" not in vars(sampler)
    assert hook_count(unet) == 0
    assert webui.script_module.SESSION.current is None


# -- off / on -------------------------------------------------------------------------------------------------
def test_disabled_is_bit_identical_to_the_webui_without_the_extension(webui, txt2img, model, probe):
    """txt2img with a hires pass: S-CFG off changes nothing and installs nothing, in either pass."""
    plain = absent(webui, model, PROMPT, UNCOND, hires=(HR_SIZE, 2))
    probe.calls.clear()  # the probe is a callback of the test: it saw that run too
    disabled, p = run(webui, txt2img, model, args=off(txt2img), hires=(HR_SIZE, 2))
    assert torch.equal(disabled, plain)
    assert len(probe.calls) == STEPS + 2 and all(probe.nothing_installed(c) for c in probe.calls)
    assert not set(infotext.KEYS) & set(p.extra_generation_params)
    assert "S-CFG" not in infotext_of(webui, p)
    assert not p.comments


def test_cfg_1_steps_aside_with_a_notice(webui, txt2img, model, probe):
    """CFG 1 has no guidance to make semantic-aware (guidance-distilled models run so): nothing installed."""
    plain = absent(webui, model, PROMPT, UNCOND, cfg_scale=1.0)
    probe.calls.clear()
    on, p = run(webui, txt2img, model, cfg_scale=1.0)
    assert torch.equal(on, plain) and all(probe.nothing_installed(c) for c in probe.calls)
    assert "at CFG scale 1 no negative prompt" in p.extra_generation_params[infotext.NOTICE_KEY]
    assert not set(infotext.KEYS) & set(p.extra_generation_params)


def test_enabled_differs_is_finite_and_writes_infotext(webui, txt2img, model, reference, rates, probe, small_unet):
    plain, _ = reference
    on, p = run(webui, txt2img, model)
    assert torch.isfinite(on).all()
    assert differs(on, plain)
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert all(probe.installed(c) for c in probe.calls) and len(probe.calls) == STEPS
    assert_uninstalled(webui, small_unet, probe.calls[0].denoiser, probe.calls[0].sampler)
    assert {k: v for k, v in p.extra_generation_params.items() if k in infotext.KEYS} == {
        "S-CFG": "True", "S-CFG min rate": "0.8", "S-CFG max rate": "3", "S-CFG max scale": "15",
        "S-CFG refine": "official", "S-CFG foreground": "cond", "S-CFG start": "0", "S-CFG end": "1",
        "S-CFG hires": "True", "S-CFG maps": "False", "S-CFG maps at": "middle"}  # no word weights: no key
    text = infotext_of(webui, p)
    assert "S-CFG: True, S-CFG min rate: 0.8, S-CFG max rate: 3" in text
    assert not scfg_comments(p)


# -- generation modes -----------------------------------------------------------------------------------------
def test_img2img_batch_count_two_reuses_the_sampler(webui, img2img, model, rates, probe):
    """img2img creates its sampler once (in init) and every batch samples with it: S-CFG is installed and
    removed per batch, and batch 2 is exactly what it is alone."""
    init = torch.randn(1, 4, *SIZE, generator=torch.Generator().manual_seed(7))
    kw = dict(img2img=init, steps=4)  # denoising 0.6 of 4 steps: 3 steps per batch
    plain = absent(webui, model, PROMPT, UNCOND, **kw)
    probe.calls.clear()
    on, p = run(webui, img2img, model, n_iter=2, **kw)
    assert torch.isfinite(on).all() and differs(on[:1], plain)
    assert [c.guided for c in rates] == [{Cond(0)}] * 6
    assert len({id(c.run) for c in rates}) == 2  # one S-CFG run per batch
    assert len({id(c.sampler) for c in probe.calls}) == 1 and all(probe.installed(c) for c in probe.calls)
    second, _ = run(webui, img2img, model, seed=1, **kw)  # batch 2's seed, alone
    assert torch.equal(on[1:], second)


def test_inpainting_mask_blend_still_applies_after_scfg(webui, img2img, model, rates, probe):
    init = torch.randn(1, 4, *SIZE, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(4, *SIZE)
    mask[:, :, : SIZE[1] // 2] = 1  # 1 = keep the original (left half)
    keep = mask.bool().expand(1, -1, -1, -1)
    plain = absent(webui, model, PROMPT, UNCOND, img2img=init, mask=mask, steps=4)
    on, p = run(webui, img2img, model, img2img=init, mask=mask, steps=4)
    assert torch.equal(on[keep], init[keep])
    assert differs(on[~keep], plain[~keep])
    assert [c.guided for c in rates] == [{Cond(0)}] * 3
    # per step, the denoiser's result is blended after the (S-CFG) combination
    for call in probe.calls[-3:]:
        assert torch.equal(call.denoised[keep], init[keep])


def test_hires_pass_at_a_second_latent_size(webui, txt2img, model, rates, probe, caplog):
    hires = (HR_SIZE, 2)
    both, p = run(webui, txt2img, model, hires=hires)
    assert [(c.size, c.guided) for c in rates] == [(SIZE, {Cond(0)})] * STEPS + [(HR_SIZE, {Cond(0)})] * 2
    assert len({id(c.run) for c in rates}) == 2
    assert not scfg_comments(p) and not warnings_logged(caplog)
    assert torch.isfinite(both).all()

    # "Apply on hires. fix pass" off: the first pass is S-CFG, the second exactly the WebUI's plain hires pass
    rates.clear()
    probe.calls.clear()
    first_only, p = run(webui, txt2img, model, hires=hires, args=scfg(txt2img, hires=False))
    assert [c.size for c in rates] == [SIZE] * STEPS
    assert all(probe.installed(c) for c in probe.calls[:STEPS])
    assert len(probe.calls) == STEPS + 2 and all(probe.nothing_installed(c) for c in probe.calls[STEPS:])
    assert p.extra_generation_params["S-CFG hires"] == "False"
    first_pass, _ = run(webui, txt2img, model)
    plain_second = absent(webui, model, PROMPT, UNCOND, hires=hires, firstpass=first_pass)
    assert torch.equal(first_only, plain_second)
    assert differs(both, first_only)


def test_batch_of_two_with_a_weighted_and_prompt(webui, txt2img, model, rates):
    """Image 0 has two AND sub-prompts (weights 0.7, 0.5), image 1 one: every cond row is guided with its own
    image's maps, and each image is what it is alone (up to the U-Net's float noise between batch sizes)."""
    image0, image1 = [(A, 0.7), (B, 0.5)], [(C, 1.0)]
    noise = torch.randn(2, 4, *SIZE, generator=torch.Generator().manual_seed(0))
    plain = absent(webui, model, [image0, image1], [NEG, NEG2])
    on, p = run(webui, txt2img, model, [image0, image1], [NEG, NEG2])
    assert torch.isfinite(on).all() and differs(on[0], plain[0]) and differs(on[1], plain[1])
    assert [c.guided for c in rates] == [{Cond(0, 0), Cond(0, 1), Cond(1, 0)}] * STEPS
    alone0, _ = run(webui, txt2img, model, [image0], [NEG], noise=noise[:1])
    alone1, _ = run(webui, txt2img, model, [image1], [NEG2], noise=noise[1:])
    torch.testing.assert_close(on[:1], alone0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(on[1:], alone1, rtol=1e-3, atol=1e-3)


def test_batch_count_two_gives_each_batch_its_own_masks(webui, txt2img, model, rates):
    on, p = run(webui, txt2img, model, n_iter=2)
    assert [c.guided for c in rates] == [{Cond(0)}] * (2 * STEPS)
    assert len({id(c.run) for c in rates}) == 2
    second, _ = run(webui, txt2img, model, seed=1)  # batch 2's seed, alone
    assert torch.equal(on[1:], second)


def test_long_prompt_with_a_short_negative_takes_a_separate_uncond_call(webui, txt2img, model, rates, unet_calls):
    """154-token prompt, 77-token negative, no padding: cond rows and uncond rows go to separate U-Net calls."""
    assert webui.shared.opts.pad_cond_uncond is False
    prompts = [[(emb(6, 154), 1.0)]]
    plain = absent(webui, model, prompts, UNCOND)
    unet_calls.clear()
    on, p = run(webui, txt2img, model, prompts, UNCOND)
    assert unet_calls == [1, 1] * STEPS
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert torch.isfinite(on).all() and differs(on, plain) and not scfg_comments(p)
    assert "Pad conds" not in p.extra_generation_params


def test_batch_cond_uncond_off_splits_calls_that_mix_cond_and_uncond_rows(webui, txt2img, model, rates, unet_calls):
    prompts, uncond = [[(A, 0.7), (B, 0.5)], [(C, 1.0)]], [NEG, NEG2]
    batched, _ = run(webui, txt2img, model, prompts, uncond)
    rates.clear()
    unet_calls.clear()
    webui.shared.opts.batch_cond_uncond = False
    split, p = run(webui, txt2img, model, prompts, uncond)
    assert unet_calls == [2, 2, 1] * STEPS  # rows: [c00 c01] [c10 u0] [u1]
    assert [c.guided for c in rates] == [{Cond(0, 0), Cond(0, 1), Cond(1, 0)}] * STEPS
    torch.testing.assert_close(split, batched, rtol=1e-3, atol=1e-3)
    assert differs(split, absent(webui, model, prompts, uncond))


def test_second_order_sampler(webui, txt2img, model, rates, probe):
    """Heun: two denoiser calls per step (the last step one), total_steps doubled; the schedule window is a
    fraction of the denoiser calls, so end=0.5 covers the first 3 of 6."""
    plain = absent(webui, model, PROMPT, UNCOND, sampler="Heun")
    on, p = run(webui, txt2img, model, sampler="Heun", args=scfg(txt2img, end=0.5))
    assert [c.step for c in probe.calls[-5:]] == [0, 1, 2, 3, 4]
    assert probe.calls[-1].denoiser.total_steps == 2 * STEPS
    assert [c.guided for c in rates] == [{Cond(0)}] * 3
    assert torch.isfinite(on).all() and differs(on, plain)


def test_prompt_editing_schedule(webui, txt2img, model, rates, probe):
    """Prompt editing, as prompt_parser schedules it: [(end_at_step 0, A), (STEPS, B)], i.e. A at step 0 and B
    after. S-CFG guides every step, with the prompt (and so the maps) of that step."""
    scheduled = [[([(0, A), (STEPS, B)], 1.0)]]
    plain = absent(webui, model, scheduled, UNCOND)
    on, p = run(webui, txt2img, model, scheduled, UNCOND)
    edited = probe.calls[-STEPS:]
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert torch.isfinite(on).all() and differs(on, plain)
    probe.calls.clear()
    only_a, _ = run(webui, txt2img, model, [[(A, 1.0)]], UNCOND)
    assert torch.equal(edited[0].denoised, probe.calls[0].denoised)  # step 0: prompt A, S-CFG on A's maps
    assert differs(edited[1].denoised, probe.calls[1].denoised)
    assert differs(on, only_a)


@pytest.mark.parametrize("mode", ["NGMS", "Skip Early CFG"])
def test_steps_without_uncond_stay_plain(webui, txt2img, model, rates, combines, probe, mode):
    """Steps where the WebUI skips the uncond rows (combine gets cond_scale 1.0 and the cond rows in place of the
    uncond rows) are left to the WebUI; the others get S-CFG."""
    if mode == "NGMS":
        kw, skipped = dict(p_fields={"s_min_uncond": 100.0}), [1, 3]  # every odd step (sigma < 100 always)
    else:
        webui.shared.opts.skip_early_cond = 0.25
        kw, skipped = {}, [0, 1]  # step / total_steps <= 0.25
    plain = absent(webui, model, PROMPT, UNCOND, steps=4, **kw)
    combines.clear()
    probe.calls.clear()
    on, p = run(webui, txt2img, model, steps=4, **kw)
    assert [c.cond_scale for c in combines] == [1.0 if i in skipped else 7.5 for i in range(4)]
    assert [c.guided for c in rates] == [{Cond(0)}] * (4 - len(skipped))
    for i, (combine, call) in enumerate(zip(combines, probe.calls, strict=True)):
        substituted = not torch.equal(combine.x_out, call.x_out)  # S-CFG hands the combiner guided cond rows
        assert substituted == (i not in skipped), i
    assert mode in p.extra_generation_params
    assert torch.isfinite(on).all() and differs(on, plain, by=0) and not scfg_comments(p)


@pytest.mark.parametrize("name", ["none", "sdp", "sdp-no-mem", "Doggettx"])
def test_every_attention_optimization(webui, txt2img, model, reference, rates, monkeypatch, name):
    """The WebUI swaps CrossAttention.forward for fused kernels; the capture works under each (Doggettx forced
    to slice) and gives the same image as under ldm's own forward."""
    import ldm.modules.attention
    import modules.sd_hijack_optimizations as opt

    monkeypatch.setattr(ldm.modules.attention.CrossAttention, "forward", ldm.modules.attention.CrossAttention.forward)
    monkeypatch.setattr(opt, "available_vram", 1 << 20)  # Doggettx: several query slices per layer
    optimization = {"none": opt.SdOptimization(), "sdp": opt.SdOptimizationSdp(),
                    "sdp-no-mem": opt.SdOptimizationSdpNoMem(), "Doggettx": opt.SdOptimizationDoggettx()}[name]
    optimization.undo()
    optimization.apply()
    try:
        on, _ = run(webui, txt2img, model)
    finally:
        optimization.undo()
    plain, reference_on = reference
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    torch.testing.assert_close(on, reference_on, rtol=1e-3, atol=1e-3)
    assert differs(on, plain)


def test_v_prediction(webui, txt2img, small_unet, rates):
    v_model = H.sd_model(small_unet, "v")
    plain = absent(webui, v_model, PROMPT, UNCOND)
    on, p = run(webui, txt2img, v_model)
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert torch.isfinite(on).all() and differs(on, plain) and not scfg_comments(p)


@pytest.mark.parametrize("kind", ["sd3", "edit"])
def test_unsupported_models_get_a_notice_and_plain_cfg(webui, txt2img, img2img, small_unet, probe, kind):
    unsupported = H.sd_model(small_unet)
    if kind == "sd3":
        unsupported.is_sd3 = True
        runner, kw, rows = txt2img, {}, 2
    else:  # instruct-pix2pix: img2img with an image CFG scale takes the three-prediction edit path
        unsupported.cond_stage_key = "edit"
        init = torch.randn(1, 4, *SIZE, generator=torch.Generator().manual_seed(7))
        runner, kw, rows = img2img, dict(img2img=init, steps=4, p_fields={"image_cfg_scale": 1.5}), 3
    plain = absent(webui, unsupported, PROMPT, UNCOND, **kw)
    probe.calls.clear()
    on, p = run(webui, runner, unsupported, **kw)
    assert torch.equal(on, plain)
    assert all(c.rows == rows and probe.nothing_installed(c) for c in probe.calls) and probe.calls
    (comment,) = scfg_comments(p)
    assert comment.startswith("S-CFG is off for this model")
    assert not set(infotext.KEYS) & set(p.extra_generation_params)


# -- cleanup --------------------------------------------------------------------------------------------------
def test_everything_removed_after_an_exception_inside_sampling(webui, txt2img, model, small_unet, probe, rates):
    """The U-Net raises on its 2nd call (e.g. out of memory): the exception leaves sampling, p.sample and the
    generation (postprocess never runs), and S-CFG is gone all the same."""
    unet_forward = small_unet.forward
    calls = []

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (test)")
        return unet_forward(*args, **kwargs)

    small_unet.forward = failing_forward  # an instance attribute: Module.__call__ still runs the hooks
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            run(webui, txt2img, model)
    finally:
        del small_unet.forward
    assert len(probe.calls) == 2 and all(probe.installed(c) for c in probe.calls)
    assert_uninstalled(webui, small_unet, probe.calls[0].denoiser, probe.calls[0].sampler)
    rates.clear()
    run(webui, txt2img, model)  # the next generation is normal
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS


def test_everything_removed_after_an_interrupt(webui, txt2img, model, small_unet, probe, monkeypatch, rates):
    """Interrupt: CFGDenoiser.forward raises InterruptedException, which launch_sampling catches; S-CFG must be
    gone when sampling returns (checked at the sampler's add_infotext, before postprocess runs)."""
    state = webui.shared.state
    sampler_cls = sys.modules["modules.sd_samplers_common"].Sampler
    at_return = []
    add_infotext = sampler_cls.add_infotext

    def spy(self, p):
        at_return.append((hook_count(small_unet), "combine_denoised" in vars(self.model_wrap_cfg),
                          "launch_sampling" in vars(self), webui.script_module.SESSION.current))
        return add_infotext(self, p)

    def interrupt_after_two(params):
        if len(probe.calls) == 2:
            state.interrupt()

    monkeypatch.setattr(sampler_cls, "add_infotext", spy)
    webui.script_callbacks.on_cfg_after_cfg(interrupt_after_two)
    try:
        out, p = run(webui, txt2img, model, steps=4)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(interrupt_after_two)
    assert state.interrupted and len(probe.calls) == 2 and all(probe.installed(c) for c in probe.calls)
    assert at_return == [(0, False, False, None)]
    assert_uninstalled(webui, small_unet, probe.calls[0].denoiser, probe.calls[0].sampler)
    assert torch.isfinite(out).all()
    state.interrupted = False
    rates.clear()
    run(webui, txt2img, model)
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS


def test_reload_ui_removes_everything(webui, txt2img, model, small_unet):
    """"Reload UI" runs the script_unloaded callbacks: the pass in progress and the API validator go."""
    import modules.api.api as api
    from modules import sd_samplers

    original = api.Api.init_script_args
    webui.script_callbacks.app_started_callback(None, None)
    try:
        assert getattr(api.Api.init_script_args, "_scfg_validator", False)
        webui.shared.sd_model = model
        p = webui.processing.StableDiffusionProcessingTxt2Img(sampler_name="Euler", steps=STEPS, batch_size=1)
        p.scripts, p.script_args = txt2img, scfg(txt2img)
        txt2img.process(p)
        p.sampler = sd_samplers.create_sampler("Euler", model)
        c, uc = H.conds(PROMPT, STEPS, UNCOND)
        x = torch.zeros(1, 4, *SIZE)
        txt2img.process_before_every_sampling(p, x=x, noise=x, c=c, uc=uc)
        denoiser = p.sampler.model_wrap_cfg
        assert webui.script_module.SESSION.current is not None and hook_count(small_unet) > 0
        assert "combine_denoised" in vars(denoiser) and "launch_sampling" in vars(p.sampler)

        webui.script_callbacks.script_unloaded_callback()
        assert_uninstalled(webui, small_unet, denoiser, p.sampler)
        assert api.Api.init_script_args is original
    finally:
        api.Api.init_script_args = original


# -- neighbours and trouble -----------------------------------------------------------------------------------
def test_another_extensions_combine_denoised_is_called_through(webui, txt2img, model, reference, probe, rates):
    neighbour = webui.extra_modules[0].CfgOffset
    neighbour.calls.clear()
    neighbour.installed.clear()
    both, p = run(webui, txt2img, model, p_fields={"test_cfg_offset": 0.05})
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert len(neighbour.calls) == STEPS
    for (x_in, cond_scale, out), call in zip(neighbour.calls, probe.calls, strict=True):
        assert cond_scale == 7.5
        assert differs(x_in[0], call.x_out[0], by=0)  # it combines S-CFG's guided cond row ...
        assert torch.equal(x_in[1], call.x_out[1])  # ... and the WebUI's uncond row
        assert torch.equal(call.denoised, out)  # and its result (with its offset) is the step's result
    denoiser, its_combine = neighbour.installed[0]
    assert vars(denoiser)["combine_denoised"] is its_combine  # its override is back, ours is gone
    _, scfg_alone = reference
    assert differs(both, scfg_alone)


def test_unexpected_map_shapes_from_a_deep_shrink_extension(webui, txt2img, model, small_unet, rates, caplog):
    """Kohya deep shrink (as sd-webui-kohya-hiresfix does it): U-Net input block 3 gets its input downscaled 2x
    and output block 4 upscales back, for the first 2 steps. The latent/4 attention then sees latent/8 maps:
    those steps stay plain with one warning (the same problem twice), the later ones get S-CFG."""

    class Scaler(torch.nn.Module):
        def __init__(self, scale, block):
            super().__init__()
            self.scale, self.block, self.active = scale, block, True

        def forward(self, x, *args):
            if self.active:
                x = F.interpolate(x, scale_factor=self.scale, mode="bicubic")
            return self.block(x, *args)

    down, up = Scaler(0.5, small_unet.input_blocks[3]), Scaler(2.0, small_unet.output_blocks[4])

    def early_out(params):
        down.active = up.active = params.denoiser.step < 2

    small_unet.input_blocks[3], small_unet.output_blocks[4] = down, up
    webui.script_callbacks.on_cfg_denoiser(early_out)
    try:
        shrunk_plain = absent(webui, model, PROMPT, UNCOND, steps=4)
        on, p = run(webui, txt2img, model, steps=4)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(early_out)
        small_unet.input_blocks[3], small_unet.output_blocks[4] = down.block, up.block
    assert [c.guided for c in rates] == [set(), set(), {Cond(0)}, {Cond(0)}]
    (comment,) = scfg_comments(p)
    assert "does not fit" in comment
    assert warnings_logged(caplog) == [comment]
    assert torch.isfinite(on).all() and differs(on, shrunk_plain, by=0)  # late steps: a small change


def test_a_non_finite_rate_leaves_that_step_plain(webui, txt2img, model, rates, probe, caplog):
    """A cond output whose per-pixel norm overflows float32 (finite values, infinite norm) at the last step:
    the rate map is not finite, so that step's rate is 1 everywhere (decided on the device: the guided cond row
    is the cond row bit for bit) and the step is the WebUI's plain CFG, with one warning at the end of the pass,
    and the image finite."""
    cfg_denoiser = sys.modules["modules.sd_samplers_cfg_denoiser"].CFGDenoiser
    huge = []

    def overflow_last_step(params):
        if len(probe.calls) == STEPS:
            params.x[0, 0] = 1e30  # cond row, channel 0, every pixel
            huge.append(params.x.clone())

    webui.script_callbacks.on_cfg_denoised(overflow_last_step)
    try:
        on, p = run(webui, txt2img, model)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(overflow_last_step)
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    (x_out,) = huge
    last = probe.calls[-1]
    plain_last = cfg_denoiser.combine_denoised(last.denoiser, x_out, [[(0, 1.0)]], x_out[1:], 7.5)
    assert torch.equal(last.denoised, plain_last)
    (comment,) = scfg_comments(p)
    assert "non-finite" in comment and warnings_logged(caplog) == [comment]
    assert torch.isfinite(on).all()


def test_no_foreground_on_any_step_is_a_notice_and_plain_cfg(webui, txt2img, model, reference, rates, monkeypatch):
    """Every cell owned by the background tokens on every step (a DiT with random weights whose padding takes
    the attention did this in a real Forge Neo): the rate is 1 everywhere, the image is the plain CFG image bit
    for bit, and the user is told, once."""
    masks = AttentionCapture.stacked_masks

    def background_only(self, latent_size):  # the last channel is the foreground
        return [(keys, torch.cat([stacked[:, :-1], torch.zeros_like(stacked[:, -1:])], 1))
                for keys, stacked in masks(self, latent_size)]

    monkeypatch.setattr(AttentionCapture, "stacked_masks", background_only)
    on, p = run(webui, txt2img, model)
    plain, _ = reference
    assert [c.guided for c in rates] == [{Cond(0)}] * STEPS
    assert torch.equal(on, plain)
    (comment,) = scfg_comments(p)
    assert "found no foreground on any step" in comment
    assert p.extra_generation_params[infotext.NOTICE_KEY] == comment
    monkeypatch.setattr(AttentionCapture, "stacked_masks", masks)
    _, p = run(webui, txt2img, model)
    assert not scfg_comments(p)


def test_xyz_cells_with_their_own_settings(webui, txt2img, model, reference):
    """X: [S-CFG] Max rate 1, 1.5; Y: [S-CFG] Enabled True, False. Each cell is a shallow copy of one p (shared
    extra_generation_params dict), processed in turn; each cell's infotext, written right after it ran as
    process_images does, shows its own settings, and disabled cells show none and are the plain image."""
    parse = sys.modules["modules.infotext_utils"].parse_generation_parameters
    xyz = webui.xyz
    axes = {o.label: o for o in xyz.axis_options}
    x_opt, y_opt = axes["[S-CFG] Max rate"], axes["[S-CFG] Enabled"]
    xs = xyz.process_axis(None, x_opt, "1, 1.5", None)  # the default (3) is capped at 15 / 7.5 = 2
    ys = xyz.process_axis(None, y_opt, "", ["True", "False"])
    assert xs == [1.0, 1.5] and ys == ["True", "False"]
    ui_p = H.make_p(webui, txt2img, model, size=SIZE, steps=STEPS, args=H.script_args(txt2img))  # S-CFG off
    images, texts = {}, {}
    for y in ys:
        for x in xs:
            images[x, y], pc = H.generate(webui, txt2img, model, PROMPT, UNCOND, p=ui_p,
                                          cell=[(x_opt, x, xs), (y_opt, y, ys)])
            texts[x, y] = parse(infotext_of(webui, pc))
    plain, _ = reference
    assert differs(images[1.0, "True"], images[1.5, "True"])
    assert differs(images[1.0, "True"], plain)
    assert texts[1.0, "True"]["S-CFG max rate"] == "1" and texts[1.5, "True"]["S-CFG max rate"] == "1.5"
    assert texts[1.0, "True"]["S-CFG"] == texts[1.5, "True"]["S-CFG"] == "True"
    for x in xs:
        assert torch.equal(images[x, "False"], plain)
        assert not [k for k in texts[x, "False"] if k.startswith("S-CFG")], texts[x, "False"]


# -- A1111 1.6-1.9 ------------------------------------------------------------------------------------------
def test_webui_without_process_before_every_sampling(webui, txt2img, model, reference, monkeypatch, small_unet):
    """1.6-1.9 never call ``process_before_every_sampling``: S-CFG installs itself from the first
    ``on_cfg_denoiser`` call of the sampler instead, gives the same image, and is gone after ``postprocess``."""
    _, on_110 = reference
    glue = webui.script_module.SESSION
    monkeypatch.setattr(glue, "legacy", True)
    monkeypatch.setattr(txt2img, "process_before_every_sampling", lambda p, **kwargs: None)
    on_19, p = run(webui, txt2img, model)
    assert torch.equal(on_19, on_110)
    assert glue.current is None and glue.pending is None and hook_count(small_unet) == 0
    assert "S-CFG: True" in infotext_of(webui, p)


# -- S-CFG maps and word weights ----------------------------------------------------------------------------------
@pytest.fixture
def pictures(monkeypatch):
    """Every map picture drawn: its labels, title and maps (``maps.picture`` spied)."""
    from scfg_ext.webui import maps

    calls = []
    original = maps.picture

    def spy(base, kept, labels, title):
        out = original(base, kept, labels, title)
        calls.append(types.SimpleNamespace(base=base, kept=kept, labels=list(labels), title=title, image=out))
        return out

    monkeypatch.setattr(maps, "picture", spy)
    return calls


MAPS_TEXTS = ["a red horse in a meadow", "a horse AND a wonderfully blue sky"]


def test_maps_follow_the_results_and_change_nothing_else(webui, txt2img, model, pictures):
    """Batch of 2 (image 2 with two AND sub-prompts) with a hires pass: one picture per image, pass and
    sub-prompt after the results, in image order; the samples, seeds and the results' infotexts are those of the
    same generation without maps; every picture saved with the suffix; its infotext is its image's."""
    import modules.images as images

    prompts, uncond = [[(A, 1.0)], [(B, 0.7), (C, 0.5)]], [NEG, NEG2]
    kw = dict(texts=MAPS_TEXTS, hires=(HR_SIZE, 2))
    plain, p0 = run(webui, txt2img, model, prompts, uncond, **kw)
    images.saved.clear()
    on, p = run(webui, txt2img, model, prompts, uncond, args=scfg(txt2img, show_maps=True), **kw)
    assert torch.equal(plain, on)
    before, after = p0.harness_processed, p.harness_processed
    assert len(after.images) == 2 + 6 and len(after.infotexts) == 8
    for k in range(2):
        assert list(after.images[k].getdata()) == list(before.images[k].getdata())
        assert after.infotexts[k] == before.infotexts[k].replace("S-CFG maps: False", "S-CFG maps: True")
    assert after.all_seeds == before.all_seeds == [0, 1] and after.index_of_first_image == 0
    assert [c.title for c in pictures] == ["image 1, middle step", "image 1, hires, middle step",
                                           "image 2, AND 1, middle step", "image 2, AND 2, middle step",
                                           "image 2, hires, AND 1, middle step", "image 2, hires, AND 2, middle step"]
    assert [c.image for c in pictures] == after.images[2:]
    assert after.infotexts[2:] == [after.infotexts[0]] * 2 + [after.infotexts[1]] * 4
    assert [c.kept.owner.shape for c in pictures] == [SIZE, HR_SIZE, SIZE, SIZE, HR_SIZE, HR_SIZE]
    assert all(c.base is after.images[0] for c in pictures[:2]) and all(c.base is after.images[1] for c in pictures[2:])
    # labels from the WebUI's tokenizer, per sub-prompt (the stand-in splits words over 8 letters in two pieces)
    assert pictures[0].labels[:7] == ["start/padding", "a", "red", "horse", "in", "a", "meadow"]
    assert pictures[3].labels[:6] == ["start/padding", "a", "wonderfully", "wonderfully", "blue", "sky"]
    assert set(pictures[0].labels[7:]) == {"start/padding"} and len(pictures[0].labels) == 77
    assert [s["suffix"] for s in images.saved] == ["-scfg-maps"] * 6
    assert [s["seed"] for s in images.saved] == [0, 0, 1, 1, 1, 1]
    assert p.extra_generation_params["S-CFG maps"] == "True"


def test_maps_not_saved_without_the_save_setting_and_average_step(webui, txt2img, model, pictures):
    import modules.images as images

    webui.shared.opts.samples_save = False
    images.saved.clear()
    _, p = run(webui, txt2img, model, texts=["a horse"], args=scfg(txt2img, show_maps=True, maps_step="average"))
    assert images.saved == [] and len(p.harness_processed.images) == 2
    assert pictures[0].title == "image 1, average step"
    rate = pictures[0].kept.rate.float()
    assert rate.shape == SIZE and torch.isfinite(rate).all()


def test_maps_over_img2img_inpaint_and_batch_count(webui, img2img, model, pictures):
    init = torch.randn(1, 4, *SIZE, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 1, *SIZE)
    mask[..., :8] = 1
    _, p = run(webui, img2img, model, img2img=init, mask=mask, steps=4, n_iter=2, texts=["a horse", "a cat"],
               args=scfg(img2img, show_maps=True, maps_step="last"))
    processed = p.harness_processed
    assert len(processed.images) == 4
    assert [c.base for c in pictures] == processed.images[:2]
    assert pictures[1].labels[:3] == ["start/padding", "a", "cat"]


def test_maps_without_tokens_name_positions_and_never_fail(webui, txt2img, model, pictures, monkeypatch):
    from scfg_ext.webui import prompts

    monkeypatch.setattr(prompts, "prompt_engine", lambda sd_model: ("", None))
    _, p = run(webui, txt2img, model, texts=["a horse"], args=scfg(txt2img, show_maps=True, word_weights="horse: 2"))
    assert pictures[0].labels[:2] == ["token 0", "token 1"]
    assert "could not read the prompt's tokens" in p.extra_generation_params[infotext.NOTICE_KEY]
    assert len(p.harness_processed.images) == 2


def test_maps_drawing_error_is_a_notice(webui, txt2img, model, monkeypatch):
    from scfg_ext.webui import maps

    monkeypatch.setattr(maps, "picture", lambda *a: 1 / 0)
    _, p = run(webui, txt2img, model, args=scfg(txt2img, show_maps=True))
    assert "could not draw its maps (ZeroDivisionError" in p.extra_generation_params[infotext.NOTICE_KEY]
    assert len(p.harness_processed.images) == 1


def test_word_weights_reach_the_rate_per_image_and_sub_prompt(webui, txt2img, model, rates, token_weights_seen):
    """The weights of every cond row come from its own sub-prompt's tokens; guidance_rate gets them fitted to
    the context; an entry found nowhere is a notice; a weight 0 region is plain CFG."""
    seen = token_weights_seen
    prompts, uncond = [[(A, 1.0)], [(B, 0.7), (C, 0.5)]], [NEG, NEG2]
    plain, _ = run(webui, txt2img, model, prompts, uncond, texts=MAPS_TEXTS)
    seen.clear()
    weighted, p = run(webui, txt2img, model, prompts, uncond, texts=MAPS_TEXTS,
                      args=scfg(txt2img, word_weights="horse: 0, blue sky: 2, zebra: 1.5"))
    weights = rates[-1].run.token_weights
    assert weights[Cond(0, 0)][3] == 0 and weights[Cond(1, 0)][2] == 0  # "horse" in image 1 and in "a horse"
    assert weights[Cond(1, 1)][4:6].tolist() == [2.0, 2.0]  # "a wonderfully blue sky": blue sky
    assert sum(float((w != 1).sum()) for w in weights.values()) == 4
    assert len(seen) == 3 * STEPS and all(w is not None and w.shape == (77,) for w in seen)
    assert differs(plain, weighted, 1e-6)
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert notice == 'S-CFG word weights: "zebra" matches no word of the prompt'
    assert p.extra_generation_params["S-CFG word weights"] == "horse: 0, blue sky: 2, zebra: 1.5"


def test_malformed_word_weights_turn_scfg_off_with_a_notice(webui, txt2img, model):
    _, p = run(webui, txt2img, model, args=scfg(txt2img, word_weights="horse 2"))
    assert p.scfg_settings is None
    assert "'word_weights'" in p.extra_generation_params[infotext.NOTICE_KEY]
    assert "S-CFG is off for this generation" in p.extra_generation_params[infotext.NOTICE_KEY]


def test_api_returns_the_maps_only_when_asked(webui, txt2img, img2img, model):
    import modules.api.api as api_module

    api = api_module.Api(txt2img_runner=txt2img, img2img_runner=img2img)
    for show, count in ((False, 2), (True, 4)):
        request = api_module.SimpleRequest(alwayson_scripts={"S-CFG": {"args": [{"enabled": True, "show_maps": show}]}})
        args = api.script_args_for_request(request)
        _, p = run(webui, txt2img, model, [[(A, 1.0)], [(B, 1.0)]], [NEG, NEG2], args=args, texts=["a horse", "a cat"])
        response = api_module.images_response(p.harness_processed)
        assert len(response["images"]) == count
        import json

        info = json.loads(response["info"])
        assert info["all_seeds"] == [0, 1] and len(info["infotexts"]) == count
