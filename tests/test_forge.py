"""End to end through Forge (tests/forge_harness.py: the A1111 stand-in with Forge @ dfdcbab's denoiser,
``forge_objects`` reset, U-Net patcher, ``sampling_function`` batching and transformer-block dispatch).

S-CFG off is bit-identical to Forge's own path; S-CFG on gives the A1111 route's result (same U-Net, seed and
settings) however Forge batches the chunks, leaves CFG 1 and extra U-Net calls of other extensions alone, and
stacks with a CFG function (Dynamic Thresholding's slot) and a post-CFG function with an attention replace
patch (SAG's way).
"""

from __future__ import annotations

import functools
import types

import pytest
import torch
import webui_harness as H
from conftest import hook_count
from forge_harness import forge_model, forge_webui
from forge_harness import generate as forge_generate

from scfg_ext.webui import forge, infotext

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, STEPS = (16, 16), 3


def emb(seed: int, tokens: int = 77) -> torch.Tensor:
    return torch.randn(tokens, 768, generator=torch.Generator().manual_seed(seed))


A, B, C, NEG, NEG2 = emb(1), emb(2), emb(3), emb(4), emb(5)
LONG = emb(6, 154)
CASES = {  # (prompts, negative prompts): per image, its (cond, weight) sub-prompts
    "plain": ([[(A, 1.0)]], [NEG]),
    "AND": ([[(A, 1.0), (B, 0.6)]], [NEG]),
    # the same weights in both images: Forge gives sub-prompt j of every image the last image's weight
    # (backend/sampling/condition.py:129-131), where A1111 keeps each image's own
    "batch 2 + AND": ([[(A, 1.0), (B, 0.5)], [(C, 1.0), (A, 0.5)]], [NEG, NEG2]),
    "154-token prompt, 77-token negative": ([[(LONG, 1.0)]], [NEG]),
    # more than 4x the negative's length: Forge can't batch them and runs the prompt first, alone; with AND the
    # short sub-prompt is batched with the uncond (uncond first), the long one ran before it
    "385-token prompt": ([[(emb(7, 385), 1.0)]], [NEG]),
    "AND with a 385-token sub-prompt": ([[(emb(7, 385), 1.0), (B, 0.6)]], [NEG]),
}

WEIGHTED_AND = "AND, a word weight on sub-prompt 2"

# Forge built-ins' ways of patching the U-Net, as a neighbour extension (loaded before ours): a CFG function
# (Dynamic Thresholding, forge_dynamic_thresholding.py), a post-CFG function that runs an extra uncond-only
# U-Net call with an attention replace patch on the middle block (SAG, forge_sag.py:112-166)
NEIGHBOUR = '''
import modules.scripts as scripts
import torch


class ForgeNeighbour(scripts.Script):
    mode = None
    seen = []

    def title(self):
        return "Forge neighbour (test)"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        if ForgeNeighbour.mode is None:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        if ForgeNeighbour.mode == "dt":
            def cfg_function(args):
                ForgeNeighbour.seen.append(args["cond_denoised"].clone())
                x, cond, uncond = args["input"], args["cond_denoised"], args["uncond_denoised"]
                result = uncond + (cond - uncond) * args["cond_scale"]
                return x - result.clamp(-1.5, 1.5)
            unet.set_model_sampler_cfg_function(cfg_function)
        else:
            from backend.sampling.sampling_function import calc_cond_uncond_batch

            def attn_and_record(q, k, v, extra_options):
                heads = extra_options["n_heads"]
                b, n, _ = q.shape
                q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                return out.transpose(1, 2).reshape(b, n, -1)

            def post_cfg(args):
                uncond, x = args["uncond"], args["input"]
                degraded, _ = calc_cond_uncond_batch(args["model"], uncond, None, x * 0.9, args["sigma"],
                                                     args["model_options"])
                ForgeNeighbour.seen.append(degraded)
                return args["denoised"] + 0.0 * degraded

            unet.set_model_attn1_replace(attn_and_record, "middle", 0, 0)
            unet.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
        p.sd_model.forge_objects.unet = unet
'''


@pytest.fixture(scope="module")
def a1111_results(small_unet):
    """The A1111 route's images for every case, S-CFG on (computed before the WebUI is turned into Forge)."""
    webui = H.load_webui()
    runner, model = H.build_runner(webui), H.sd_model(small_unet)
    results = {name: H.generate(webui, runner, model, prompts, uncond, size=SIZE, steps=STEPS,
                                args=H.script_args(runner, enabled=True))[0]
               for name, (prompts, uncond) in CASES.items()}
    results[WEIGHTED_AND] = H.generate(webui, runner, model, *CASES["AND"], size=SIZE, steps=STEPS,
                                       texts=["a horse AND " + "cat " * 20],
                                       args=H.script_args(runner, enabled=True, word_weights="cat: 0"))[0]
    return results


@pytest.fixture(scope="module")
def webui(a1111_results, tmp_path_factory):
    path = tmp_path_factory.mktemp("forge_neighbour") / "forge_neighbour.py"
    path.write_text(NEIGHBOUR)
    with forge_webui(extra_scripts=[path]) as webui:
        yield webui


@pytest.fixture(scope="module")
def txt2img(webui):
    return H.build_runner(webui)


@pytest.fixture(scope="module")
def img2img_runner(webui):
    return H.build_runner(webui, is_img2img=True)


@pytest.fixture(scope="module")
def model(small_unet):
    return forge_model(small_unet)


@pytest.fixture(autouse=True)
def clean(webui, model, small_unet):
    neighbour = webui.extra_modules[0].ForgeNeighbour
    neighbour.mode, neighbour.seen = None, []
    yield
    neighbour.mode = None
    sampling = __import__("backend.sampling.sampling_function", fromlist=["x"])
    sampling.MAX_CHUNKS_PER_CALL = None
    assert hook_count(small_unet) == 0  # nothing left on the shared U-Net
    assert webui.script_module.SESSION.current is None
    assert model.forge_objects_after_applying_lora.unet.model_options == {"transformer_options": {}}


def generate(webui, runner, model, case="plain", enabled=True, **kw):
    prompts, uncond = CASES[case]
    args = H.script_args(runner, enabled=enabled) if runner is not None else None
    kw = {"size": SIZE, "steps": STEPS, **kw}
    if runner is None:
        with H.extension_absent(webui):
            return forge_generate(webui, None, model, prompts, uncond, **kw)
    return forge_generate(webui, runner, model, prompts, uncond, args=args, **kw)


def close(a, b, rel=1e-4) -> bool:
    """Equal up to float rounding: Forge batches the uncond rows first, A1111 last, so the U-Net's kernels
    round differently (measured: 3e-4 on values up to 25)."""
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


def assert_served(webui, txt2img, net, model, module, prompts, uncond):
    """A DiT family S-CFG serves: off is Forge's image bit for bit, on differs with the infotext and no notice,
    and nothing is left on the network or in its module (``attention_function``)."""
    function = module.attention_function
    assert forge.Backend().unsupported_reason(model) is None
    run = functools.partial(forge_generate, webui, txt2img, model, prompts, uncond, size=SIZE, steps=STEPS)
    with H.extension_absent(webui):
        plain, _ = forge_generate(webui, None, model, prompts, uncond, size=SIZE, steps=STEPS)
    off, _ = run(args=H.script_args(txt2img, enabled=False))
    on, p = run(args=H.script_args(txt2img, enabled=True))
    assert torch.equal(off, plain) and (on - plain).abs().max() > 1e-2
    assert "S-CFG" in p.extra_generation_params and infotext.NOTICE_KEY not in p.extra_generation_params
    assert hook_count(net) == 0 and module.attention_function is function


def test_the_forge_backend_is_chosen(webui):
    assert isinstance(webui.script_module.SESSION.backend, forge.Backend)


def test_works_under_inference_mode_with_cold_caches(webui, txt2img, model):
    """Forge samples under torch.inference_mode(), where autograd (and so anything cached that needed it)
    is unavailable: S-CFG's constants must be computed without it."""
    from scfg_ext import masks

    masks._smoothed_mean_weights.cache_clear()
    plain, _ = generate(webui, None, model)
    on, p = generate(webui, txt2img, model)
    assert (on - plain).abs().max() > 1e-2 and infotext.NOTICE_KEY not in p.extra_generation_params


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_disabled_is_bit_identical_to_forge_without_the_extension(webui, txt2img, model, sampler):
    plain, _ = generate(webui, None, model, "batch 2 + AND", sampler=sampler)
    disabled, p = generate(webui, txt2img, model, "batch 2 + AND", enabled=False, sampler=sampler)
    assert torch.equal(plain, disabled)
    assert not any(key in p.extra_generation_params for key in infotext.ALL_KEYS)


@pytest.mark.parametrize("case", list(CASES))
def test_enabled_equals_the_a1111_route(webui, txt2img, model, a1111_results, case):
    plain, _ = generate(webui, None, model, case)
    on, p = generate(webui, txt2img, model, case)
    assert torch.isfinite(on).all()
    assert (on - plain).abs().max() > 1e-2
    assert close(on, a1111_results[case]), (on - a1111_results[case]).abs().max()
    assert p.extra_generation_params[infotext.ENABLED_KEY] == "True"
    assert infotext.NOTICE_KEY not in p.extra_generation_params


@pytest.mark.parametrize("chunks_per_call", [None, 1])
def test_each_and_sub_prompt_keeps_its_own_word_weights(webui, txt2img, model, a1111_results, chunks_per_call):
    """Forge batches a step's chunks in reverse (``backend/sampling/sampling_function.py``
    ``calc_cond_uncond_batch``, ``to_batch_temp.reverse()``, @ dfdcbab, also in Neo and reForge's
    ``ldm_patched/modules/samplers.py``): uncond, then sub-prompt n-1 ... 0, also when memory splits them. A
    weight on a word of sub-prompt 2 (the stand-in U-Net's random context gives "cat" cells when it is repeated)
    must act on sub-prompt 2's output, as on the A1111 route."""
    sampling = __import__("backend.sampling.sampling_function", fromlist=["x"])
    sampling.MAX_CHUNKS_PER_CALL = chunks_per_call
    on, p = forge_generate(webui, txt2img, model, *CASES["AND"], size=SIZE, steps=STEPS,
                           texts=["a horse AND " + "cat " * 20],
                           args=H.script_args(txt2img, enabled=True, word_weights="cat: 0"))
    assert not close(a1111_results[WEIGHTED_AND], a1111_results["AND"])  # the weight matters
    assert close(on, a1111_results[WEIGHTED_AND]), (on - a1111_results[WEIGHTED_AND]).abs().max()
    assert infotext.NOTICE_KEY not in p.extra_generation_params


@pytest.mark.parametrize("case", ["batch 2 + AND", "154-token prompt, 77-token negative"])
def test_split_calls_equal_one_call(webui, txt2img, model, case):
    one_call, _ = generate(webui, txt2img, model, case)
    sampling = __import__("backend.sampling.sampling_function", fromlist=["x"])
    sampling.MAX_CHUNKS_PER_CALL = 1  # low free memory: every chunk in its own U-Net call, uncond first
    split, p = generate(webui, txt2img, model, case)
    assert close(split, one_call)
    assert infotext.NOTICE_KEY not in p.extra_generation_params


def test_cfg_1_is_untouched_and_says_why(webui, txt2img, model):
    """At CFG 1 (where guidance-distilled models such as Z-Image-Turbo run) Forge computes no uncond."""
    plain, _ = generate(webui, None, model, "AND", cfg_scale=1.0)
    on, p = generate(webui, txt2img, model, "AND", cfg_scale=1.0)
    assert torch.equal(on, plain)
    assert "at CFG scale 1 no negative prompt is computed" in p.extra_generation_params[infotext.NOTICE_KEY]
    assert "S-CFG" not in p.extra_generation_params


def test_an_extra_uncond_call_after_the_cfg_function_changes_nothing(webui, txt2img, model):
    """SAG's way: an attention replace patch on the middle block and an uncond-only U-Net call in a
    post-CFG function (here adding 0 times its result): S-CFG's result is the same as without it."""
    alone, _ = generate(webui, txt2img, model, "batch 2 + AND")
    neighbour = webui.extra_modules[0].ForgeNeighbour
    neighbour.mode = "sag"
    with_sag, p = generate(webui, txt2img, model, "batch 2 + AND")
    assert len(neighbour.seen) == STEPS  # the extra call ran at every step
    assert close(with_sag, alone)
    assert infotext.NOTICE_KEY not in p.extra_generation_params


def test_stacks_with_a_cfg_function(webui, txt2img, model):
    """Dynamic Thresholding's slot: its function sees S-CFG's guided cond and both act."""
    neighbour = webui.extra_modules[0].ForgeNeighbour
    neighbour.mode = "dt"
    dt_alone, _ = generate(webui, txt2img, model, "AND", enabled=False)
    plain_conds = list(neighbour.seen)
    neighbour.seen.clear()
    both, _ = generate(webui, txt2img, model, "AND")
    neighbour.mode = None
    scfg_alone, _ = generate(webui, txt2img, model, "AND")
    assert (neighbour.seen[0] - plain_conds[0]).abs().max() > 1e-3  # DT got S-CFG's cond
    assert (both - dt_alone).abs().max() > 1e-2 and (both - scfg_alone).abs().max() > 1e-2


def test_hires_at_cfg_1_tells_the_user(webui, txt2img, model):
    """Forge's API default hr_cfg = 1: the hires pass has no uncond; S-CFG says so in the infotext."""
    p = H.make_p(webui, txt2img, model, size=SIZE, steps=STEPS, args=H.script_args(txt2img, enabled=True))
    p.hr_cfg = 1.0
    prompts, uncond = CASES["plain"]
    _, p = forge_generate(webui, txt2img, model, prompts, uncond, p=p, hires=((24, 24), 2))
    assert "Hires CFG Scale 1" in p.extra_generation_params[infotext.NOTICE_KEY]


def test_hires_pass_is_guided_at_hires_cfg(webui, txt2img, model, small_unet):
    calls = []
    hook = small_unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[-1]))
    try:
        p = H.make_p(webui, txt2img, model, size=SIZE, steps=STEPS, args=H.script_args(txt2img, enabled=True))
        p.hr_cfg = 7.5
        prompts, uncond = CASES["plain"]
        on, p = forge_generate(webui, txt2img, model, prompts, uncond, p=p, hires=((24, 24), 2))
    finally:
        hook.remove()
    assert torch.isfinite(on).all() and infotext.NOTICE_KEY not in p.extra_generation_params
    assert 24 in calls


def test_inpaint(webui, img2img_runner, model):
    init = torch.randn(1, 4, *SIZE, generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(1, 1, *SIZE)
    mask[..., :8, :] = 1  # keep the top half
    plain, _ = generate(webui, None, model, img2img=init, mask=mask)
    off, _ = generate(webui, img2img_runner, model, enabled=False, img2img=init, mask=mask)
    on, p = generate(webui, img2img_runner, model, img2img=init, mask=mask)
    assert torch.equal(off, plain)
    assert torch.isfinite(on).all() and (on - plain).abs().max() > 1e-2
    assert infotext.NOTICE_KEY not in p.extra_generation_params


def test_a_model_without_a_unet_is_named_and_left_alone(webui, txt2img, model):
    """Flux, Chroma, SD3 ...: Forge gives them no ldm-style U-Net; S-CFG names the family and steps aside."""
    from forge_harness import ForgeObjects

    class Flux:
        forge_objects = ForgeObjects(type("Patcher", (), {"model": torch.nn.Module(), "clone": None})())

    assert forge.Backend().unsupported_reason(Flux()) == "Flux has no U-Net with cross-attention"
    p = H.make_p(webui, txt2img, model, args=H.script_args(txt2img, enabled=True))
    webui.shared.sd_model = Flux()
    try:
        webui.script_module.SESSION.process(p, [True])
    finally:
        webui.shared.sd_model = model
    assert p.scfg_settings is None
    assert p.extra_generation_params[infotext.NOTICE_KEY] == \
        "S-CFG is off for this model: Flux has no U-Net with cross-attention; using plain CFG"


def test_a_wrapper_set_after_ours_is_reported(webui, txt2img, model, monkeypatch):
    """MultiDiffusion's way: its own U-Net function wrapper, set after S-CFG's (Forge keeps one)."""
    from backend.patcher.unet import UnetPatcher

    clone = UnetPatcher.clone

    def clone_then_wrap(self):
        n = clone(self)
        n.model_options["model_function_wrapper"] = lambda apply, args: apply(args["input"], args["timestep"],
                                                                              **args["c"])
        return n

    monkeypatch.setattr(UnetPatcher, "clone", clone_then_wrap)  # every later set_... lands on a wrapped clone
    monkeypatch.setattr(UnetPatcher, "set_model_unet_function_wrapper", lambda self, f: None)
    plain, _ = generate(webui, None, model)
    on, p = generate(webui, txt2img, model)
    assert torch.equal(on, plain)
    assert "replaced S-CFG's U-Net function wrapper" in p.extra_generation_params[infotext.NOTICE_KEY]


def test_a_tiling_wrapper_under_ours_steps_aside(webui, txt2img, model, monkeypatch):
    """MultiDiffusion set before S-CFG (Neo 283cb2c4, ``extensions-builtin/sd_forge_multidiffusion/
    lib_multidiffusion/tiled_diffusion.py``: ``TiledDiffusion.apply`` sets ``MultiDiffusion.__call__`` as the
    wrapper, which S-CFG's then wraps; it runs ``model_function`` on batches of tiles cut from ``args["input"]``,
    ``x_tile_out[i*N:(i+1)*N]`` being tile i). Maps of a tile are not the image's: S-CFG steps aside, named."""
    def multidiffusion(model_function, args):  # two 16x8 tiles in one batch, no overlap
        x, n = args["input"], args["input"].shape[0]
        half = x.shape[-1] // 2
        tiles = [(..., slice(None), slice(0, half)), (..., slice(None), slice(half, None))]
        c = {**args["c"], "c_crossattn": args["c"]["c_crossattn"].repeat(2, 1, 1)}
        out = model_function(torch.cat([x[t] for t in tiles]), args["timestep"].repeat(2), **c)
        stitched = torch.zeros_like(x)
        for i, t in enumerate(tiles):
            stitched[t] = out[i * n:(i + 1) * n]
        return stitched

    monkeypatch.setitem(model.forge_objects_after_applying_lora.unet.model_options, "model_function_wrapper",
                        multidiffusion)
    monkeypatch.setattr(model, "forge_objects", model.forge_objects_after_applying_lora.shallow_copy())  # as MD sets it
    tiled, _ = generate(webui, None, model)
    on, p = generate(webui, txt2img, model)
    assert torch.equal(on, tiled)
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert "the U-Net ran on 16x8 tiles of the 16x16 latent (a tiling extension such as MultiDiffusion)" in notice


def test_maps_go_to_forges_extra_images(webui, txt2img, model):
    """Forge: the pictures go to ``processed.extra_images`` (= ``p.extra_result_images``), which its UI shows and
    its API returns after the results; ``images``, seeds and infotexts are the results' alone. Batch 2 with AND
    and a hires pass (run twice by Forge's ``process_before_every_sampling``): one picture per image, pass and
    sub-prompt, labelled from ``text_processing_engine``."""
    import modules.api.api as api_module

    from scfg_ext.webui import maps

    prompts, uncond = CASES["batch 2 + AND"]
    titles = []
    original = maps.picture

    def spy(base, kept, labels, title):
        titles.append((title, labels[:4]))
        return original(base, kept, labels, title)

    maps.picture = spy
    try:
        p = H.make_p(webui, txt2img, model, 2, size=SIZE, steps=STEPS,
                     args=H.script_args(txt2img, enabled=True, show_maps=True, word_weights="horse: 1.5"))
        p.hr_cfg = 7.5
        _, p = forge_generate(webui, txt2img, model, prompts, uncond, p=p, hires=((24, 24), 2),
                              texts=["a horse AND a cat", "a dog AND a horse"])
    finally:
        maps.picture = original
    processed = p.harness_processed
    assert len(processed.images) == 2 and len(processed.infotexts) == 2 and processed.all_seeds == [0, 1]
    assert len(processed.extra_images) == 8 and p.extra_result_images == []  # shared by X/Y/Z cells: untouched
    assert [t for t, _ in titles][:4] == ["image 1, AND 1, middle step", "image 1, AND 2, middle step",
                                         "image 1, hires, AND 1, middle step", "image 1, hires, AND 2, middle step"]
    assert titles[0][1] == ["start/padding", "a", "horse", "start/padding"]
    assert titles[1][1] == ["start/padding", "a", "cat", "start/padding"]
    assert [labels for _, labels in titles[4:6]] == [["start/padding", "a", "dog", "start/padding"],
                                                     ["start/padding", "a", "horse", "start/padding"]]
    assert infotext.NOTICE_KEY not in p.extra_generation_params  # "horse" is in both images
    response = api_module.images_response(processed, forge=True)
    assert len(response["images"]) == 10


def test_word_weights_are_repeated_with_a_repeated_context(webui, txt2img, model, token_weights_seen):
    """Forge repeats a 77-token prompt to the 154 tokens of a long negative (LCM): the weights follow."""
    seen = token_weights_seen
    _, p = forge_generate(webui, txt2img, model, [[(A, 1.0)]], [LONG], size=SIZE, steps=STEPS, texts=["a horse"],
                          args=H.script_args(txt2img, enabled=True, word_weights="horse: 0"))
    assert seen and all(w.shape == (154,) for w in seen)
    assert seen[0][[2, 79]].tolist() == [0.0, 0.0] and float((seen[0] != 1).sum()) == 2


def test_reforge_keeps_the_prompt_engine_as_cond_stage_model(webui, txt2img, model, token_weights_seen, monkeypatch):
    """reForge (``modules_forge/forge_loader.py`` @ 3b56b268) has no ``text_processing_engine``: its hijacked
    A1111 engine is ``cond_stage_model``. Word weights apply there and no notice says the tokens are unreadable."""
    monkeypatch.delattr(model, "text_processing_engine")
    weighted, p = forge_generate(webui, txt2img, model, [[(A, 1.0)]], [NEG], size=SIZE, steps=STEPS, texts=["a horse"],
                                 args=H.script_args(txt2img, enabled=True, word_weights="horse: 0"))
    assert token_weights_seen and token_weights_seen[0][2].item() == 0.0
    assert "could not read the prompt's tokens" not in p.extra_generation_params.get(infotext.NOTICE_KEY, "")
    plain_scfg, _ = generate(webui, txt2img, model)
    assert not torch.equal(weighted, plain_scfg)


def test_api_requests_get_the_maps_from_every_forks_api(webui, txt2img, model):
    """Forge 2's API returns ``images + extra_images``, reForge's (``modules/api/api.py`` @ 3b56b268) only
    ``images``: for an API request the maps go after the results in ``images``, with their infotexts."""
    import modules.api.api as api_module

    p = H.make_p(webui, txt2img, model, 2, size=SIZE, steps=STEPS,
                 args=H.script_args(txt2img, enabled=True, show_maps=True))
    p.is_api = True
    _, p = forge_generate(webui, txt2img, model, *CASES["batch 2 + AND"], p=p,
                          texts=["a horse AND a cat", "a dog AND a horse"])
    processed = p.harness_processed
    assert processed.extra_images == [] and len(processed.images) == 2 + 4 and len(processed.infotexts) == 6
    assert processed.infotexts[2:] == [processed.infotexts[0]] * 2 + [processed.infotexts[1]] * 2
    for forge_2 in (True, False):  # Forge 2, reForge
        assert len(api_module.images_response(processed, forge=forge_2)["images"]) == 6


@pytest.fixture(scope="module")
def dit_model():
    """Forge Neo with an Anima-type diffusion transformer (the miniature DiT, random weights, CLIP-wide context)."""
    from scfg_ext.miniature.dit import MiniatureDiT

    torch.manual_seed(0)
    net = MiniatureDiT(dim=32, depth=3, heads=4, context_dim=768).eval().requires_grad_(False)
    return net, forge_model(net)


def test_an_anima_type_dit_is_served(webui, txt2img, dit_model):
    from scfg_ext.miniature import dit

    assert_served(webui, txt2img, *dit_model, dit, *CASES["batch 2 + AND"])


def anima_context(seed: int, tokens: int) -> torch.Tensor:
    """An Anima context: ``tokens`` embedded T5 positions (the prompt and ``</s>``), zeros to 512."""
    out = torch.zeros(512, 768)
    out[:tokens] = emb(seed, tokens)
    return out


def run_with_engine(webui, txt2img, model, monkeypatch, name, engine, prompt, uncond, word_weights):
    """One generation of "a red horse" with the maps shown, the model's prompt engine at ``name`` only (as Neo
    keeps it): the labels of the first map and the generation's ``p``."""
    from scfg_ext.webui import maps

    monkeypatch.delattr(model, "text_processing_engine")
    monkeypatch.setattr(model, "cond_stage_model", types.SimpleNamespace())  # Neo: the text encoders' holder
    monkeypatch.setattr(model, name, engine, raising=False)
    labels_seen = []
    original = maps.picture
    monkeypatch.setattr(maps, "picture", lambda base, kept, labels, title: labels_seen.append(labels) or original(
        base, kept, labels, title))
    _, p = forge_generate(webui, txt2img, model, [[(prompt, 1.0)]], [uncond], size=SIZE, steps=STEPS,
                          texts=["a red horse"], args=H.script_args(
                              txt2img, enabled=True, show_maps=True, word_weights=word_weights))
    assert labels_seen
    return labels_seen[0], p


def test_anima_maps_and_word_weights_read_its_t5_tokens(webui, txt2img, dit_model, token_weights_seen, monkeypatch):
    """Anima's engine (``text_processing_engine_anima``, no ``text_processing_engine``) labels the maps and places
    the word weights by its T5 tokens, in one 512-position chunk; an unmatched word gets its notice."""
    from backend.text_processing.anima_engine import AnimaTextProcessingEngine

    # "a red horse": ▁ a ▁red ▁horse </s>
    labels, p = run_with_engine(webui, txt2img, dit_model[1], monkeypatch, "text_processing_engine_anima",
                                AnimaTextProcessingEngine(), anima_context(1, 5), anima_context(4, 1),
                                "horse: 0, zebra: 2")
    assert token_weights_seen and all(w.shape == (512,) for w in token_weights_seen)
    assert torch.nonzero(token_weights_seen[0] != 1).flatten().tolist() == [3] and token_weights_seen[0][3] == 0
    assert labels[:6] == ["a", "a", "red", "horse", "start/padding", "start/padding"] and len(labels) == 512
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert '"zebra" matches no word of the prompt' in notice and "could not read" not in notice


def test_upstream_neos_anima_tokenizer_gives_the_same_tokens():
    """Upstream Neo's Anima engine has no ``tokenize_line``; its ComfyUI-style ``t5_tokenizer`` gives the ids."""
    from backend.text_processing import anima_engine

    from scfg_ext.webui import engines

    fork = anima_engine.AnimaTextProcessingEngine()
    upstream = types.SimpleNamespace(t5_tokenizer=anima_engine.upstream_t5_tokenizer())
    assert engines.prompt_engine(types.SimpleNamespace(text_processing_engine_anima=upstream))[1] is upstream
    tokens = engines.t5_prompt_tokens(upstream, "a dog, a cat")
    assert tokens == engines.t5_prompt_tokens(fork, "a dog, a cat") and len(tokens) == 512
    assert tokens[:8] == ["", "a</w>", "dog</w>", ",</w>", "", "a</w>", "cat</w>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def nextdit_model():
    """Forge Neo with a NextDiT (Lumina 2 / Z-Image; the miniature's structure, random weights)."""
    from scfg_ext.miniature.nextdit import MiniatureNextDiT

    torch.manual_seed(0)
    net = MiniatureNextDiT(dim=32, depth=3, heads=4, context_dim=768, axes=(2, 2, 4)).eval().requires_grad_(False)
    return net, forge_model(net)


def test_a_nextdit_is_served_when_its_prompts_run_before_the_negative(webui, txt2img, nextdit_model, monkeypatch):
    """Lumina 2's texts have free lengths, so Forge rarely batches them: here AND sub-prompts of 37 and 50 tokens
    and a 23-token negative each run alone, in Forge's order (sub-prompt 0, 1, then the uncond). S-CFG tells the
    sub-prompts by their contexts and corrects after the CFG: the result equals the batched route's (the same
    equal-length contexts once batched, uncond first), and with the real lengths it guides with no notice."""
    from backend.sampling import sampling_function

    from scfg_ext.miniature import nextdit

    net, model = nextdit_model
    run = functools.partial(forge_generate, webui, txt2img, model, size=SIZE, steps=STEPS, texts=["a AND b"],
                            args=H.script_args(txt2img, enabled=True, word_weights="b: 0"))
    equal = [[(emb(1, 37), 1.0), (emb(2, 37), 0.5)]], [emb(4, 37)]
    batched, _ = run(*equal)
    concat = sampling_function.can_concat_cond
    monkeypatch.setattr(sampling_function, "can_concat_cond", lambda a, b: a is b)
    alone, p = run(*equal)
    assert close(alone, batched), (alone - batched).abs().max()
    monkeypatch.setattr(sampling_function, "can_concat_cond", concat)
    assert_served(webui, txt2img, net, model, nextdit, [[(emb(1, 37), 1.0), (emb(2, 50), 0.5)]], [emb(4, 23)])


def test_lumina_maps_and_word_weights_read_its_gemma_tokens(webui, txt2img, nextdit_model, token_weights_seen,
                                                            monkeypatch):
    """Lumina 2's engine (``text_processing_engine_gemma``) conditions on <bos>, the Neta template and the prompt:
    the word weights land on the prompt's tokens at the end of the context, the template holds no word."""
    from backend.text_processing.gemma_engine import GemmaTextProcessingEngine

    # "a red horse" in the template: <bos>, 30 template tokens, a, ▁red, ▁horse; a 23-token negative
    labels, p = run_with_engine(webui, txt2img, nextdit_model[1], monkeypatch, "text_processing_engine_gemma",
                                GemmaTextProcessingEngine(), emb(1, 34), emb(4, 23), "horse: 0, assistant: 2")
    assert token_weights_seen and all(w.shape == (34,) for w in token_weights_seen)
    assert torch.nonzero(token_weights_seen[0] != 1).flatten().tolist() == [33]
    assert labels[-4:] == ["start/padding", "a", "red", "horse"] and len(labels) == 34
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert '"assistant" matches no word of the prompt' in notice and "could not read" not in notice


def test_z_image_tokens_are_read_from_its_chat_template():
    """Z-Image's Qwen3 engine (byte-level BPE, ``Ġ`` spaces) puts the prompt inside a chat template (the real
    tokenizer's pieces, ``backend/huggingface/Tongyi-MAI/Z-Image-Turbo/tokenizer``, 283cb2c4's
    ``tokenize_line -> (chunks, count)``)."""
    from scfg_ext.webui import engines
    from scfg_ext.weights import parse_weights, token_weights

    pieces = ["<|im_start|>", "user", "Ċ", "a", "Ġred", "Ġhorse", ",", "ĠcafÃ©", "<|im_end|>", "Ċ", "<|im_start|>",
              "assistant", "Ċ"]
    template = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    halves = dict(zip(template.split("{}"), ([0, 1, 2], [8, 9, 10, 11, 12]), strict=True))  # ids: positions

    class Tokenizer:
        bos_token = None

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [halves[text] for text in texts]}

        def convert_ids_to_tokens(self, got):
            return [pieces[i] for i in got]

    engine = types.SimpleNamespace(tokenizer=Tokenizer(), llama_template=template, tokenize_line=lambda line: (
        [types.SimpleNamespace(tokens=list(range(len(pieces))))], len(pieces)))
    tokens = engines.llm_prompt_tokens(engine, "a red horse, café")
    assert tokens[3:8] == ["a</w>", "red</w>", "horse</w>", ",</w>", "cafÃ©</w>"]
    assert tokens[:3] + tokens[8:] == ["<|startoftext|>"] * 8
    weights, missing = token_weights(parse_weights("café: 2, user: 3"), tokens, chunk=len(tokens))
    assert torch.nonzero(weights != 1).flatten().tolist() == [7] and missing == ["user"]


def test_llm_engines_label_prompts_with_emphasis():
    """The engines tokenize each emphasis part on its own: Gemma's ``a (red:1.2) horse`` is ``a``, ``▁``, ``red``,
    ``▁horse`` after the template; Qwen-Image's parts are each wrapped in the chat template. Only the prompt's
    positions hold words, and a word weight lands on them alone."""
    from backend.text_processing.gemma_engine import GemmaTextProcessingEngine
    from backend.text_processing.qwen_engine import QwenTextProcessingEngine

    from scfg_ext.webui import engines
    from scfg_ext.weights import SOT, parse_weights, token_weights

    lumina = engines.llm_prompt_tokens(GemmaTextProcessingEngine(), "a (red:1.2) horse")
    assert lumina == [SOT] * 31 + ["a</w>", "", "red</w>", "horse</w>"]
    qwen = engines.qwen_image_tokens(QwenTextProcessingEngine(), "a (red:1.2) horse")
    # a, Ġ (an empty word), 5 + 34 template, red, 5 + 34 template, Ġhorse, 5 template
    assert [(i, t) for i, t in enumerate(qwen) if t != SOT] == [(0, "a</w>"), (1, "</w>"), (41, "red</w>"),
                                                                 (81, "horse</w>")]
    for tokens, red in ((lumina, [32, 33]), (qwen, [41])):
        weights, missing = token_weights(parse_weights("red: 2, describe: 3"), tokens, chunk=len(tokens))
        assert torch.nonzero(weights != 1).flatten().tolist() == red and missing == ["describe"]


@pytest.fixture(scope="module")
def mmdit_model():
    """Forge Neo with a Chroma-type MMDiT (Flux's double and single blocks; the miniature's, random weights)."""
    from scfg_ext.miniature.mmdit import MiniatureMMDiT

    torch.manual_seed(0)
    net = MiniatureMMDiT(dim=32, depth=2, depth_single=2, heads=4, context_dim=768, axes=(2, 2, 4))
    return net.eval().requires_grad_(False), forge_model(net.eval().requires_grad_(False))


def test_a_chroma_type_mmdit_is_served(webui, txt2img, mmdit_model):
    """Batched (batch 2 + AND, equal lengths) and with free lengths (a 37-token prompt run before a 23-token
    negative): off is Forge's image bit for bit, on differs with the infotext and no notice, nothing left on."""
    from scfg_ext.miniature import mmdit

    assert_served(webui, txt2img, *mmdit_model, mmdit, *CASES["batch 2 + AND"])
    assert_served(webui, txt2img, *mmdit_model, mmdit, [[(emb(1, 37), 1.0)]], [emb(4, 23)])


def test_chroma_maps_and_word_weights_read_its_t5_tokens(webui, txt2img, mmdit_model, token_weights_seen,
                                                         monkeypatch):
    """Chroma's engine (``text_processing_engine_t5``) conditions on the prompt's T5 tokens and ``</s>``: the maps
    are labelled and the word weights placed by them; an unmatched word gets its notice."""
    from backend.text_processing.t5_engine import T5TextProcessingEngine

    # "a red horse": ▁ a ▁red ▁horse </s>; a 3-token negative
    labels, p = run_with_engine(webui, txt2img, mmdit_model[1], monkeypatch, "text_processing_engine_t5",
                                T5TextProcessingEngine(), emb(1, 5), emb(4, 3), "horse: 0, zebra: 2")
    assert token_weights_seen and all(w.shape == (5,) for w in token_weights_seen)
    assert torch.nonzero(token_weights_seen[0] != 1).flatten().tolist() == [3]
    assert labels == ["a", "a", "red", "horse", "start/padding"]
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert '"zebra" matches no word of the prompt' in notice and "could not read" not in notice


@pytest.fixture(scope="module")
def qwen_model():
    """Forge Neo with a Qwen-Image MMDiT (the miniature's, random weights; 4-D latents in this harness)."""
    from scfg_ext.miniature.mmdit import MiniatureQwenImage

    torch.manual_seed(0)
    net = MiniatureQwenImage(dim=32, depth=2, heads=4, context_dim=768, axes=(2, 2, 4)).eval().requires_grad_(False)
    return net, forge_model(net)


def test_a_qwen_image_mmdit_is_served(webui, txt2img, qwen_model):
    """A 12-token prompt run before a 50-token negative: off is Forge's image, on differs with no notice."""
    from scfg_ext.miniature import mmdit

    assert_served(webui, txt2img, *qwen_model, mmdit, [[(emb(1, 12), 1.0)]], [emb(4, 50)])


def test_qwen_image_maps_and_word_weights_read_its_chat_template(webui, txt2img, qwen_model, token_weights_seen,
                                                                 monkeypatch):
    """Qwen-Image's engine (``text_processing_engine_qwen``): its context is the chat template cut after
    ``<|im_start|>user\n`` (``strip_template``): the prompt's tokens, then 5 template tokens with no word."""
    from backend.text_processing.qwen_engine import QwenTextProcessingEngine

    # "a red horse": a, Ġred, Ġhorse, <|im_end|>, Ċ, <|im_start|>, assistant, Ċ; a 50-token negative (run alone)
    labels, p = run_with_engine(webui, txt2img, qwen_model[1], monkeypatch, "text_processing_engine_qwen",
                                QwenTextProcessingEngine(), emb(1, 8), emb(4, 50), "horse: 0, assistant: 2")
    assert token_weights_seen and all(w.shape == (8,) for w in token_weights_seen)
    assert torch.nonzero(token_weights_seen[0] != 1).flatten().tolist() == [2]
    assert labels == ["a", "red", "horse"] + ["start/padding"] * 5
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert '"assistant" matches no word of the prompt' in notice and "could not read" not in notice


@pytest.mark.parametrize("name, attrs, says", [
    ("NunchakuQwenImageTransformer2DModel", {}, "does not serve Qwen-Image with Nunchaku"),
    ("WanModel", {}, "does not serve Wan (video)"),
    ("IntegratedFluxTransformer2DModel", {"guidance_embed": True}, "Flux.1 dev is guidance-distilled: it runs"),
    ("SVDQFluxTransformer2DModel", {}, "Flux.1 dev (Nunchaku) is guidance-distilled"),
    ("IntegratedFluxTransformer2DModel", {"guidance_embed": False}, "does not serve Flux.2 Klein or Flux.1 schnell"),
])
def test_other_dits_are_named(name, attrs, says):
    """Forge Neo's other transformers (backend/nn/*.py at nolanlane 6e1e0d5) get a notice naming their family;
    flux.py's class is Flux.1 dev's (a guidance embedding) and also Flux.2 Klein's and Flux.1 schnell's."""
    from forge_harness import ForgeObjects

    net = type(name, (torch.nn.Module,), attrs)()
    model = type("Engine", (), {"forge_objects": ForgeObjects(type("Patcher", (), {"model": type(
        "KModel", (), {"diffusion_model": net})(), "clone": None})())})()
    assert says in forge.Backend().unsupported_reason(model)
