"""S-CFG's regions are semantic: on the trained miniature models (scfg_ext/miniature: the U-Net and the diffusion
transformers with Anima's blocks, NextDiT's joint layers and Chroma's double and single blocks), through the
stand-in A1111 and Forge pipelines, each object word's region overlaps that object's exact mask.

img2img from the ground-truth scene (``denoising_strength`` ``STRENGTH``): the first guided step sees the scene
noised to a known level, so the world's masks are exact for it. Batch 2 with a different prompt per image, and an
``AND`` prompt (one sub-prompt per object): each image's and each sub-prompt's regions are its own. The
thresholds come from ``bench/quality.py`` (table 1) with a margin; the last tests break the capture on purpose
(maps from the uncond rows, transposed maps, token positions off by one) and check that the same thresholds
catch it.
"""

from __future__ import annotations

import pytest
import torch
import webui_harness as H
from forge_harness import forge_model, forge_webui
from forge_harness import generate as forge_generate

import scfg_ext.guidance as guidance
from scfg_ext import masks as M
from scfg_ext.capture import AttentionCapture, Cond, Uncond
from scfg_ext.miniature import evaluate as E
from scfg_ext.miniature import model as MM
from scfg_ext.miniature import world as W

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, STRENGTH, CFG = 10, 0.5, 7.5
# scenes of the evaluation stream (bench/quality.py), fixed before any threshold was set: 2, 2 and 3 objects
SCENES = [W.make_scene(W.scene_seed(E.EVAL_STREAM, i)) for i in (16, 27, 3)]
# (each object word's region vs its mask, the mean over all objects of a test, each foreground)
THRESHOLDS = {
    "unet": (0.1, 0.28, 0.2),  # measured: means 0.36-0.43; broken captures 0.00-0.20
    # measured: each 0.09-0.48, means 0.23-0.31, foregrounds 0.13-0.42; broken captures 0.00-0.35, means 0.10-0.14
    "dit": (0.05, 0.2, 0.1),
    # measured: each 0.23-0.50, means 0.36-0.44, foregrounds 0.54-0.64; broken captures 0.00-0.51, means 0.14-0.21
    "nextdit": (0.15, 0.3, 0.3),
    # measured: each 0.17-0.53, means 0.28-0.42; broken captures 0.00-0.43, means 0.00-0.17. The foreground is the
    # whole image (the MMDiTs' background "image"): its IoU is the named share of the scene (0.18 where the ground
    # is not named), which the threshold only bounds
    "mmdit": (0.12, 0.22, 0.1),
}


MODELS = {"unet": (None, None), "dit": (MM.DIT_WEIGHTS, MM.DIT_WEIGHTS_SHA256),
          "nextdit": (MM.NEXTDIT_WEIGHTS, MM.NEXTDIT_WEIGHTS_SHA256),
          "mmdit": (MM.MMDIT_WEIGHTS, MM.MMDIT_WEIGHTS_SHA256)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def mini(request):
    return E.Miniature.load(*MODELS[request.param])


def contexts(mini, prompts):
    cond, uncond = mini.contexts(prompts)
    return list(cond), list(uncond)


def init_latents(scenes):
    return MM.to_latent(torch.stack([s.render() for s in scenes]))


@pytest.fixture
def seen(monkeypatch):
    """The first guided step's maps, keyed ``Cond(image, sub-prompt)`` (``StepMaps``): what ``ScfgRun.rates``
    computed the rates from, whatever order the backend's calls came in."""
    first = guidance.StepMaps({}, {}, {})
    original = guidance.ScfgRun.deviations

    def rates(self, uncond, conds, cfg_scale):
        self.keep_maps = True
        out = original(self, uncond, conds, cfg_scale)
        if out and self.last_maps is not None:
            for key in self.last_maps.regions:
                first.regions.setdefault(key, self.last_maps.regions[key].cpu())
                first.foreground.setdefault(key, self.last_maps.foreground[key].cpu())
        return out

    monkeypatch.setattr(guidance.ScfgRun, "deviations", rates)
    return first


def batch_scores(mini, maps, scenes):
    return [E.scene_scores(maps, i, s, first=mini.tokenizer.first_word) for i, s in enumerate(scenes)]


def and_scores(mini, maps, scene):
    """Sub-prompt k of the AND prompt names object k alone ("a <colour> <shape>", the words after "a")."""
    masks = scene.masks()
    words = [mini.tokenizer.first_word + 1, mini.tokenizer.first_word + 2]
    return [E.iou(E.word_region(maps.regions[Cond(0, k)], words), masks[k]) for k in range(len(scene.objects))]


def assert_semantic(mini, object_ious, foreground_ious=()):
    each, mean, foreground = THRESHOLDS[family(mini)]
    assert min(object_ious) > each, object_ious
    assert sum(object_ious) / len(object_ious) > mean, object_ious
    for f in foreground_ious:
        assert f > foreground, foreground_ious


def and_prompt(mini, scene):
    subs = [f"a {o.colour} {o.shape}" for o in scene.objects]
    cond, uncond = contexts(mini, subs)
    return [[(c, 1.0) for c in cond]], uncond[:1]


# ------------------------------------------------------------------------------------------------------
# A1111


def is_dit(mini) -> bool:
    return not hasattr(mini.net, "input_blocks")


def family(mini) -> str:
    if hasattr(mini.net, "double_blocks"):
        return "mmdit"
    return "nextdit" if hasattr(mini.net, "layers") else "dit" if is_dit(mini) else "unet"


@pytest.fixture(scope="module")
def a1111(mini):
    if is_dit(mini):
        pytest.skip("A1111 runs no diffusion transformer")
    webui = H.load_webui()
    return webui, H.build_runner(webui, is_img2img=True), H.sd_model(mini.net)


def a1111_img2img(a1111, prompts, uncond, scenes):
    webui, runner, model = a1111
    return H.generate(webui, runner, model, prompts, uncond, size=(W.SIZE, W.SIZE), steps=STEPS, cfg_scale=CFG,
                      img2img=init_latents(scenes), p_fields={"denoising_strength": STRENGTH},
                      args=H.script_args(runner, enabled=True))


def test_a1111_batch_of_two_prompts(mini, a1111, seen):
    scenes = SCENES[:2]
    cond, uncond = contexts(mini, [s.caption for s in scenes])
    a1111_img2img(a1111, [[(c, 1.0)] for c in cond], uncond, scenes)
    scores = batch_scores(mini, seen, scenes)
    assert_semantic(mini, [v for s in scores for v in s.objects], [s.foreground for s in scores])


def test_a1111_and_prompt_gives_each_sub_prompt_its_object(mini, a1111, seen):
    scene = SCENES[0]
    prompts, uncond = and_prompt(mini, scene)
    a1111_img2img(a1111, prompts, uncond, [scene])
    assert_semantic(mini, and_scores(mini, seen, scene))


def test_disabled_is_bit_identical_to_the_webui_without_the_extension(mini, request):
    """On the trained model, in the WebUI that runs it (A1111 for the U-Net, Forge Neo for the DiTs)."""
    webui, runner, model = request.getfixturevalue("forge" if is_dit(mini) else "a1111")
    generate = forge_generate if is_dit(mini) else H.generate
    scenes = SCENES[:2]
    cond, uncond = contexts(mini, [s.caption for s in scenes])
    run = lambda runner, **kw: generate(  # noqa: E731
        webui, runner, model, [[(c, 1.0)] for c in cond], uncond, size=(W.SIZE, W.SIZE), steps=STEPS,
        cfg_scale=CFG, img2img=init_latents(scenes), p_fields={"denoising_strength": STRENGTH}, **kw)[0]
    with H.extension_absent(webui):
        plain = run(None)
    off = run(runner, args=H.script_args(runner, enabled=False))
    on = run(runner, args=H.script_args(runner, enabled=True))
    assert torch.equal(off, plain) and not torch.equal(on, plain)


# ------------------------------------------------------------------------------------------------------
# the thresholds catch a broken capture


def declare_wrong_roles(monkeypatch, wrong):
    """Rows declared with ``wrong(roles)``, per step (A1111) and per call (Forge)."""
    for name in ("plan_step", "plan_call"):
        original = getattr(AttentionCapture, name)
        monkeypatch.setattr(AttentionCapture, name, lambda self, roles, original=original: original(
            self, wrong(roles) if roles else roles))


def swap_roles(monkeypatch):
    declare_wrong_roles(monkeypatch, lambda roles: [
        Uncond(r.image) if isinstance(r, Cond) else Cond(r.image) if isinstance(r, Uncond) else r for r in roles])


def mix_images(monkeypatch):
    """Each image's cond rows declared as another image's (the batch's maps mixed up)."""
    def mixed(roles):
        n = 1 + max(r.image for r in roles)
        return [Cond(n - 1 - r.image, r.index) if isinstance(r, Cond) else r for r in roles]

    declare_wrong_roles(monkeypatch, mixed)


def transpose_maps(monkeypatch):
    original = M.stacked_masks
    monkeypatch.setattr(M, "stacked_masks", lambda tokens, pair, size: original(tokens.mT, pair, size))


def tokens_off_by_one(monkeypatch):
    original = M.stacked_masks
    monkeypatch.setattr(M, "stacked_masks", lambda tokens, pair, size: original(tokens.roll(1, dims=1), pair, size))


@pytest.mark.parametrize("break_capture", [swap_roles, mix_images, transpose_maps, tokens_off_by_one])
def test_a_broken_capture_fails_the_thresholds(mini, request, seen, monkeypatch, break_capture):
    if is_dit(mini) and break_capture is tokens_off_by_one:
        # the DiTs' colour and shape words own nearly the same cells (measured: one position off scores 0.26,
        # right 0.25; NextDiT 0.39 and 0.44), so a shift by one word lands on the same object: this break is the
        # U-Net's to catch
        pytest.skip("the DiT's neighbouring words share their maps")
    scenes = SCENES[:2]
    cond, uncond = contexts(mini, [s.caption for s in scenes])
    break_capture(monkeypatch)
    run = (forge_img2img, "forge") if is_dit(mini) else (a1111_img2img, "a1111")
    run[0](request.getfixturevalue(run[1]), [[(c, 1.0)] for c in cond], uncond, scenes)
    scores = batch_scores(mini, seen, scenes)
    # the objects' and the named ground's regions: trained to share an object's cells, its colour and shape words
    # survive a shift by one word (U-Net 507720d0: objects 0.50/0.30/0.33/0.36 right, 0.46/0.27/0.23/0.43 shifted),
    # the ground word does not (0.59 right, 0.00 shifted: "on" is its neighbour)
    regions = [v for s in scores for v in s.objects] + [s.ground for s in scores if s.ground is not None]
    with pytest.raises(AssertionError):
        assert_semantic(mini, regions)


# ------------------------------------------------------------------------------------------------------
# Forge


@pytest.fixture(scope="module")
def forge(mini):
    mini = E.Miniature.load(mini.path, mini.sha256)  # a net of its own: forge_model installs Forge's block dispatch
    with forge_webui() as webui:
        yield webui, H.build_runner(webui, is_img2img=True), forge_model(mini.net)


def forge_img2img(forge, prompts, uncond, scenes):
    webui, runner, model = forge
    return forge_generate(webui, runner, model, prompts, uncond, size=(W.SIZE, W.SIZE), steps=STEPS,
                          cfg_scale=CFG, img2img=init_latents(scenes), p_fields={"denoising_strength": STRENGTH},
                          args=H.script_args(runner, enabled=True))


def test_forge_batch_of_two_prompts(mini, forge, seen):
    scenes = SCENES[1:3]
    cond, uncond = contexts(mini, [s.caption for s in scenes])
    forge_img2img(forge, [[(c, 1.0)] for c in cond], uncond, scenes)
    scores = batch_scores(mini, seen, scenes)
    assert_semantic(mini, [v for s in scores for v in s.objects], [s.foreground for s in scores])


def test_forge_and_prompt_gives_each_sub_prompt_its_object(mini, forge, seen):
    scene = SCENES[0]
    prompts, uncond = and_prompt(mini, scene)
    forge_img2img(forge, prompts, uncond, [scene])
    assert_semantic(mini, and_scores(mini, seen, scene))
