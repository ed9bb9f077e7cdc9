"""The WebUI-facing surface with real gradio 3.41.2 and the stand-in WebUI (A1111 v1.10.1): the accordion,
infotext paste / "Send to", X/Y/Z axes, API args and the API validator on the real request path."""

from __future__ import annotations

import math
import types

import pytest
from webui_harness import ROOT, build_runner, load_webui, our_script, script_args, script_args_app, sd_model

from scfg_ext.settings import FIELDS, Settings, SettingsError
from scfg_ext.webui import api as scfg_api
from scfg_ext.webui import controls, infotext, xyz

NAMES = [f.name for f in FIELDS]
NUMBERS = [f for f in FIELDS if f.kind is float]


@pytest.fixture(scope="module")
def webui():
    """The stand-in WebUI with X/Y/Z and our script loaded, both tabs' UIs built (as ``ui.create_ui`` does)."""
    ns = load_webui()
    ns.script_callbacks.before_ui_callback()  # webui.py: before ui.create_ui()
    ns.txt2img = build_runner(ns, is_img2img=False)
    ns.img2img = build_runner(ns, is_img2img=True)
    return ns


@pytest.fixture
def api_module(webui):
    import modules.api.api as api_module

    original = api_module.Api.init_script_args
    yield api_module
    webui.script_callbacks.script_unloaded_callback()  # our on_script_unloaded undoes the validator
    assert api_module.Api.init_script_args is original


def component_values(script):
    return [c.value for c in script.controls]


# -- static files ----------------------------------------------------------------------------------------------


REGENERATE = ("python -c \"from scfg_ext.webui.controls import hints_js; "
              "open('javascript/scfg_hints.js', 'w', newline='\\n').write(hints_js())\"")


def test_hints_js_is_generated_from_fields():
    """``javascript/scfg_hints.js`` is exactly ``hints_js()``, so the tooltips can't drift from FIELDS."""
    committed = (ROOT / "javascript" / "scfg_hints.js").read_text(encoding="utf-8")
    assert committed == controls.hints_js(), f"javascript/scfg_hints.js is stale; regenerate it: {REGENERATE}"
    for f in FIELDS:
        assert controls.elem_suffix(f.name) in committed


def test_style_css_is_scoped_to_our_classes():
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    body = "\n".join(line for line in css.splitlines() if not line.strip().startswith("/*"))
    selectors = [s.strip() for block in body.split("}") if "{" in block for s in block.split("{")[0].split(",")]
    assert selectors
    for selector in selectors:
        assert selector.startswith((".scfg-row", ".scfg-control", "#script_txt2img_scfg_", "#script_img2img_scfg_")), \
            selector


# -- the accordion -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_ui_components_follow_fields(webui, tab):
    runner = getattr(webui, tab)
    script = our_script(runner)
    assert script.args_to - script.args_from == len(FIELDS)
    assert runner.inputs[script.args_from:script.args_to] == script.controls
    assert [c.label for c in script.controls] == [f.label for f in FIELDS]
    assert component_values(script) == [f.default for f in FIELDS]
    ids = [c.elem_id for c in script.controls]
    assert ids[0] == f"script_{tab}_scfg_scfg_enabled-checkbox"  # InputAccordion's hidden checkbox
    assert script.controls[0].accordion.elem_id == f"script_{tab}_scfg_scfg_enabled"
    assert ids[1:] == [f"script_{tab}_scfg_scfg_{f.name}" for f in FIELDS[1:]]
    for control, f in zip(script.controls, FIELDS, strict=True):
        block = control.get_block_name()
        expected = "textbox" if f.free_text else {bool: "checkbox", float: "slider", str: "dropdown"}[f.kind]
        assert block == expected, (f.name, block)
        if f.name != "enabled":
            assert "scfg-control" in control.elem_classes
    assert script.controls[0].value is False  # closed and off by default


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_api_info_describes_every_field(webui, tab):
    info = our_script(getattr(webui, tab)).api_info
    assert info.name == "s-cfg" and info.is_alwayson and info.is_img2img == (tab == "img2img")
    assert len(info.args) == len(FIELDS)
    for arg, f in zip(info.args, FIELDS, strict=True):
        assert arg.label == f.label
        assert arg.value == f.default
        if f.kind is float:
            assert (arg.minimum, arg.maximum, arg.step) == (f.minimum, f.maximum, f.step)
            assert arg.minimum <= arg.value <= arg.maximum
            assert arg.choices is None
        elif f.free_text:
            assert arg.value == "" and arg.choices is None
        elif f.kind is str:
            assert arg.choices == list(f.choices) and arg.value in arg.choices
        else:
            assert isinstance(arg.value, bool) and arg.choices is None


def test_ui_builds_again_for_api_defaults(webui):
    """``Api.init_default_script_args`` calls ``ui()`` twice more inside ``gr.Blocks()``: defaults in FIELDS
    order, in the API's arg slots, for both tabs; the components built for the page stay as they were."""
    import modules.api.api as api_module

    before = {tab: list(our_script(getattr(webui, tab)).controls) for tab in ("txt2img", "img2img")}
    api = api_module.Api(txt2img_runner=webui.txt2img, img2img_runner=webui.img2img)
    for tab, defaults in (("txt2img", api.default_script_arg_txt2img), ("img2img", api.default_script_arg_img2img)):
        script = our_script(getattr(webui, tab))
        assert defaults[script.args_from:script.args_to] == [f.default for f in FIELDS]
        assert script.controls == before[tab]
        # the paste wiring (ui.py: the runner's infotext_fields, collected when the page was built) still
        # points at the page's components, not at the API's throwaway ones
        assert [c for c, _ in our_fields(getattr(webui, tab))] == before[tab]
    import gradio as gr

    with gr.Blocks():
        again = script.ui(script.is_img2img)
    assert [c.elem_id for c in again] == [c.elem_id for c in before["img2img"]]
    assert [c.value for c in again] == [f.default for f in FIELDS]


# -- infotext ----------------------------------------------------------------------------------------------------


def generation(webui, small_unet, runner, args):
    """``scripts.process`` on a fresh ``p`` with these script args, as ``process_images_inner`` does."""
    webui.shared.sd_model = sd_model(small_unet)
    cls = webui.processing.StableDiffusionProcessingImg2Img if runner is webui.img2img \
        else webui.processing.StableDiffusionProcessingTxt2Img
    p = cls(prompt="a cat", negative_prompt="blurry", sampler_name="Euler", steps=20, cfg_scale=7.0, seed=1,
            width=512, height=512)
    p.scripts = runner
    p.script_args = tuple(args)
    p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds = ["a cat"], ["blurry"], [1], [2]
    runner.process(p)
    return p


def infotext_text(webui, p):
    return webui.processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds)


def our_fields(runner):
    """Our entries of the runner's ``infotext_fields``, which ``ui.py`` hands to ``connect_paste``."""
    controls = our_script(runner).controls
    return [(c, key) for c, key in runner.infotext_fields if any(c is x for x in controls)]


def pasted(webui, runner, text):
    """Component values after pasting ``text`` (``connect_paste``), starting from the UI defaults."""
    import modules.infotext_utils as infotext_utils

    script = our_script(runner)
    fields = our_fields(runner)
    assert [c for c, _ in fields] == script.controls
    assert [key for _, key in fields] == [f.infotext for f in FIELDS]
    updates = infotext_utils.paste_values(text, fields)
    values = component_values(script)
    for i, update in enumerate(updates):
        if "value" in update:
            values[i] = update["value"]
    return values


CUSTOM = Settings(enabled=True, min_rate=0.5, max_rate=2.5, max_scale=12.5, refine="paper", foreground="uncond",
                  start=0.1, end=0.85, hires=False)


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_infotext_round_trip(webui, small_unet, tab):
    runner = getattr(webui, tab)
    p = generation(webui, small_unet, runner, script_args(runner, **CUSTOM.as_dict()))
    assert p.scfg_settings == CUSTOM
    assert p.extra_generation_params == {f.infotext: f.to_text(getattr(CUSTOM, f.name)) for f in FIELDS
                                         if f.name != "word_weights"}  # empty text: not written
    text = infotext_text(webui, p)
    params_line = text.splitlines()[-1]
    assert "S-CFG: True, S-CFG min rate: 0.5, S-CFG max rate: 2.5" in params_line
    assert '"' not in params_line  # nothing needed quoting

    import modules.infotext_utils as infotext_utils

    params = infotext_utils.parse_generation_parameters(text)
    assert infotext.read(params) == CUSTOM
    values = pasted(webui, runner, text)
    assert values == CUSTOM.as_list()
    for value, f in zip(values, FIELDS, strict=True):
        assert type(value) is f.kind


def test_disabled_writes_no_infotext(webui, small_unet):
    p = generation(webui, small_unet, webui.txt2img, script_args(webui.txt2img))
    assert p.scfg_settings is None
    assert not any(k.startswith("S-CFG") for k in p.extra_generation_params)
    assert "S-CFG" not in infotext_text(webui, p)


def test_infotext_without_scfg_turns_it_off(webui):
    text = "a dog\nNegative prompt: ugly\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512"
    values = pasted(webui, webui.txt2img, text)
    assert values[0] is False  # the accordion closes even when it was open
    assert values[1:] == [f.default for f in FIELDS[1:]]  # the rest: unchanged


def test_infotext_missing_keys_get_defaults(webui):
    """An S-CFG infotext from an older version that lacks some keys: those get their defaults."""
    text = "a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, S-CFG: True, S-CFG max rate: 4"
    values = pasted(webui, webui.txt2img, text)
    assert values == Settings(enabled=True, max_rate=4.0).as_list()


@pytest.mark.parametrize("key, bad", [("S-CFG max rate", "abc"), ("S-CFG max rate", "99"), ("S-CFG min rate", "nan"),
                                      ("S-CFG refine", "bogus"), ("S-CFG hires", "maybe"), ("S-CFG", "perhaps")])
def test_malformed_infotext_value_leaves_control_unchanged(webui, key, bad, caplog):
    base = {f.infotext: f.to_text(getattr(CUSTOM, f.name)) for f in FIELDS}
    base[key] = bad
    text = "a dog\nSteps: 20, Sampler: Euler, " + ", ".join(f"{k}: {v}" for k, v in base.items())
    import modules.infotext_utils as infotext_utils

    updates = infotext_utils.paste_values(text, our_fields(webui.txt2img))
    for update, f in zip(updates, FIELDS, strict=True):
        if f.infotext == key:
            assert "value" not in update  # gr.update(): the control keeps its value
        else:
            assert update["value"] == getattr(CUSTOM, f.name), f.name
    name = next(f.name for f in FIELDS if f.infotext == key)
    assert any(f"'{name}'" in r.getMessage() and "left unchanged" in r.getMessage() for r in caplog.records)


def test_send_to_img2img_copies_every_control(webui):
    """"Send to img2img" copies txt2img components whose infotext key is in ``paste_field_names``."""
    import modules.infotext_utils as infotext_utils

    source, destination = our_script(webui.txt2img), our_script(webui.img2img)
    assert source.paste_field_names == [f.infotext for f in FIELDS]
    pairs = infotext_utils.send_to_pairs(webui.txt2img.infotext_fields, webui.img2img.infotext_fields,
                                         webui.txt2img.paste_field_names)
    assert pairs == list(zip(source.controls, destination.controls, strict=True))
    copied = dict(zip(destination.controls, CUSTOM.as_list(), strict=True))  # fn=lambda *x: x
    assert Settings.from_args([copied[c] for c in destination.controls]) == CUSTOM


def test_paste_keys_are_names_and_parsers():
    import copy
    import pickle

    keys = infotext.paste_keys()
    assert keys == [f.infotext for f in FIELDS] and all(isinstance(k, str) and callable(k) for k in keys)
    hires = keys[NAMES.index("hires")]
    assert hires({"S-CFG hires": "False"}) is False and hires({"S-CFG hires": "True"}) is True
    assert hires({}) is None and hires({"S-CFG hires": "maybe"}) is None
    assert keys[1]({"S-CFG min rate": "0.5"}) == 0.5 and keys[1]({"S-CFG min rate": "9"}) is None
    for clone in (copy.deepcopy(hires), pickle.loads(pickle.dumps(hires))):
        assert clone == hires and clone.field == hires.field and clone({"S-CFG hires": "False"}) is False


# -- X/Y/Z plot --------------------------------------------------------------------------------------------------


def our_axes(xyz_module):
    return [o for o in xyz_module.axis_options if o.label.startswith(xyz.PREFIX)]


def test_xyz_axes_registered_once_in_fields_order(webui):
    axes = our_axes(webui.xyz)
    assert [o.label for o in axes] == [xyz.PREFIX + ("Enabled" if f.name == "enabled" else f.label) for f in FIELDS]
    assert webui.xyz.axis_options[-len(FIELDS):] == axes  # appended after the built-ins, contiguous
    assert not xyz.register(webui.xyz)  # again (on_before_ui after the import-time registration): no-op
    webui.script_callbacks.before_ui_callback()
    assert our_axes(webui.xyz) == axes
    for opt, f in zip(axes, FIELDS, strict=True):
        assert type(opt) is webui.xyz.AxisOption  # shown on both tabs
        if f.kind is bool:
            assert opt.type is str and opt.choices() == ["False", "True"]
        elif f.free_text:  # typed, in quotes when it holds commas
            assert opt.type is str and opt.choices is None
        elif f.kind is str:
            assert opt.type is str and opt.choices() == list(f.choices)
        else:
            assert opt.type is float and opt.choices is None
        assert opt.confirm is not None
    # the X/Y/Z UI lists them in both tabs
    for runner in (webui.txt2img, webui.img2img):
        xyz_script = next(s for s in runner.scripts if s.title() == "X/Y/Z plot")
        assert [o.label for o in xyz_script.current_axis_options][-len(FIELDS):] == [o.label for o in axes]


def axis(webui, name):
    f = next(f for f in FIELDS if f.name == name)
    return next(o for o in our_axes(webui.xyz) if o.label == xyz.PREFIX + ("Enabled" if name == "enabled" else f.label))


@pytest.mark.parametrize("name, text, expected", [
    ("max_rate", "1-3 (+0.5)", [1.0, 1.5, 2.0, 2.5, 3.0]),
    ("min_rate", "0.2-0.8 [4]", [0.2, 0.4, 0.6, 0.8]),
    ("max_scale", "5, 10,15", [5.0, 10.0, 15.0]),
    ("end", "0.4-1 (+0.2)", [0.4, 0.6, 0.8, 1.0]),  # np.arange ends at 1.0000000000000002
    ("start", "0-0.9 [4]", [0.0, 0.3, 0.6, 0.9]),
])
def test_xyz_float_axis_range_syntax(webui, name, text, expected):
    opt = axis(webui, name)
    values = webui.xyz.process_axis(types.SimpleNamespace(), opt, text, [], False)
    assert values == pytest.approx(expected)
    f = next(f for f in FIELDS if f.name == name)
    p = webui.processing.StableDiffusionProcessingTxt2Img()
    cells = [webui.xyz.apply_cell(p, [(opt, v, values)]) for v in values]
    assert [getattr(c, xyz.ATTR + name) for c in cells] == pytest.approx(expected)
    assert all(f.minimum <= getattr(c, xyz.ATTR + name) <= f.maximum for c in cells)
    assert not hasattr(p, xyz.ATTR + name)  # each cell writes on its own copy


@pytest.mark.parametrize("name, text", [
    ("max_rate", "2, 11"), ("min_rate", "-1-1 (+1)"), ("end", "0.7-1 (+0.1)"), ("max_scale", "0.5"),
])
def test_xyz_confirm_rejects_out_of_range(webui, name, text):
    with pytest.raises(SettingsError) as e:
        webui.xyz.process_axis(types.SimpleNamespace(), axis(webui, name), text, [], False)
    f = next(f for f in FIELDS if f.name == name)
    assert f"'{name}'" in str(e.value) and f"from {f.minimum:g} to {f.maximum:g}" in str(e.value)


def test_xyz_confirm_rejects_bad_choice_and_bad_number(webui):
    with pytest.raises(SettingsError, match="'refine' must be one of 'official', 'paper', 'none'"):
        webui.xyz.process_axis(None, axis(webui, "refine"), "", ["official", "mean"], False)
    with pytest.raises(SettingsError, match="'foreground'"):  # csv mode types values by hand
        webui.xyz.process_axis(None, axis(webui, "foreground"), "cond, both", [], True)
    with pytest.raises(ValueError):  # float("abc") in process_axis itself
        webui.xyz.process_axis(None, axis(webui, "max_rate"), "abc", [], False)


def test_xyz_dropdown_axes_and_overrides(webui, small_unet):
    xyz_mod = webui.xyz
    enabled = xyz_mod.process_axis(None, axis(webui, "enabled"), "", ["False", "True"], False)
    refine = xyz_mod.process_axis(None, axis(webui, "refine"), "", ["paper", "none"], False)
    assert enabled == ["False", "True"] and refine == ["paper", "none"]
    runner = webui.txt2img
    base = generation(webui, small_unet, runner, script_args(runner))  # S-CFG off in the UI
    results = {}
    for e in enabled:
        for r in refine:
            pc = xyz_mod.apply_cell(base, [(axis(webui, "enabled"), e, enabled), (axis(webui, "refine"), r, refine)])
            pc.extra_generation_params = {}
            runner.process(pc)
            results[e, r] = pc.scfg_settings
    assert results["False", "paper"] is None and results["False", "none"] is None
    assert results["True", "paper"] == Settings(enabled=True, refine="paper")
    assert results["True", "none"] == Settings(enabled=True, refine="none")
    # any S-CFG axis without the Enabled axis turns S-CFG on for its cells
    rate = xyz_mod.process_axis(None, axis(webui, "max_rate"), "2", [], False)
    pc = xyz_mod.apply_cell(base, [(axis(webui, "max_rate"), rate[0], rate)])
    pc.extra_generation_params = {}
    runner.process(pc)
    assert pc.scfg_settings == Settings(enabled=True, max_rate=2.0)


def test_xyz_word_weights_axis_takes_quoted_texts(webui, small_unet):
    """X/Y/Z splits its values at commas (csv): a word-weights value is one quoted text."""
    xyz_mod = webui.xyz
    values = xyz_mod.process_axis(None, axis(webui, "word_weights"), '"horse: 2, sky: 0.5", horse:1', [], False)
    assert values == ["horse: 2, sky: 0.5", "horse:1"]
    runner = webui.txt2img
    base = generation(webui, small_unet, runner, script_args(runner))
    pc = xyz_mod.apply_cell(base, [(axis(webui, "word_weights"), values[0], values)])
    pc.extra_generation_params = {}
    runner.process(pc)
    assert pc.scfg_settings == Settings(enabled=True, word_weights="horse: 2, sky: 0.5")
    with pytest.raises(SettingsError, match="word_weights"):
        axis(webui, "word_weights").confirm(None, ["horse 2"])


# -- maps: tokens and gallery placement ---------------------------------------------------------------------------


def test_prompt_engine_of_each_webui_and_model_family():
    """Found by ``tokenize_line`` wherever the fork keeps it: Forge ``text_processing_engine`` (SD1/SD2) or
    ``text_processing_engine_l`` (SDXL); A1111 and reForge ``cond_stage_model`` (SD1/SD2, hijacked); SDXL the
    first ``conditioner.embedders`` entry that is one (reForge also sets ``cond_stage_model`` to the
    conditioner, which is not)."""
    from scfg_ext.webui.engines import prompt_engine

    engine = types.SimpleNamespace(tokenize_line=lambda text: None)
    ns = types.SimpleNamespace
    conditioner = ns(embedders=[object(), engine, object()])
    assert prompt_engine(ns(cond_stage_model=engine)) == ("", engine)  # A1111, reForge SD1/SD2
    assert prompt_engine(ns(cond_stage_model=None, conditioner=conditioner)) == ("", engine)  # A1111 SDXL
    assert prompt_engine(ns(cond_stage_model=conditioner, conditioner=conditioner)) == ("", engine)  # reForge SDXL
    assert prompt_engine(ns(text_processing_engine=engine)) == ("text_processing_engine", engine)  # Forge SD1/SD2
    assert prompt_engine(ns(text_processing_engine_l=engine, text_processing_engine_g=object()))[1] is engine  # SDXL
    assert prompt_engine(ns(text_processing_engine_g=engine))[1] is engine  # Forge Neo's SDXL refiner (OpenCLIP G)
    assert prompt_engine(object()) == ("", None)
    assert prompt_engine(ns(cond_stage_model=object(), conditioner=ns(embedders=[object()]))) == ("", None)


def test_prompt_tokens_hf_and_open_clip_tokenizers():
    from modules.sd_hijack_clip import FrozenCLIPEmbedderWithCustomWords

    from scfg_ext.webui import engines

    engine = FrozenCLIPEmbedderWithCustomWords()
    tokens = engines.prompt_tokens(engine, "a red horse")
    assert tokens[:5] == ["<|startoftext|>", "a</w>", "red</w>", "horse</w>", "<|endoftext|>"] and len(tokens) == 77
    # A1111 SD2: open_clip's SimpleTokenizer (a decoder dict, <start_of_text>/<end_of_text>) via the engine's module
    ids = [t for chunk in engine.tokenize_line("a horse")[0] for t in chunk.tokens]
    decoder = {i: s for s, i in engine.tokenizer._ids.items()}
    decoder[engine.id_start], decoder[engine.id_end] = "<start_of_text>", "<end_of_text>"
    module = types.ModuleType("sd2_engine_module")
    module.tokenizer = types.SimpleNamespace(decoder=decoder)
    sd2 = type("FrozenOpenCLIPEmbedderWithCustomWords", (), {"__module__": "sd2_engine_module"})()
    sd2.tokenize_line = lambda text: ([types.SimpleNamespace(tokens=ids)], 2)
    import sys

    sys.modules["sd2_engine_module"] = module
    try:
        assert engines.prompt_tokens(sd2, "a horse")[:4] == ["<|startoftext|>", "a</w>", "horse</w>", "<|endoftext|>"]
    finally:
        del sys.modules["sd2_engine_module"]


@pytest.mark.parametrize("mode, kept_step", [("first", 0), ("last", 3), ("middle", 2)])
def test_map_keeper_picks_its_step_with_rows_in_several_calls(mode, kept_step):
    """Steps at progress 0, .25, .5, .75 (middle of the range 0.45); each step's two rows come in two calls
    (as Forge splits chunks): the step kept has both rows, from that step."""
    import torch

    from scfg_ext.capture import Cond
    from scfg_ext.guidance import MapKeeper

    keeper = MapKeeper(mode, 0.45)
    for step in range(4):
        for j in range(2):
            regions = torch.zeros(5, 2, 2)
            regions[step] = 1
            keeper.add(step / 4, {Cond(0, j): regions}, {Cond(0, j): torch.full((1, 2, 2), step + j / 10)})
    kept = keeper.result()
    assert set(kept) == {Cond(0, 0), Cond(0, 1)}
    for j in range(2):
        assert kept[Cond(0, j)].owner.eq(kept_step).all() and kept[Cond(0, j)].tokens == 5
        assert torch.allclose(kept[Cond(0, j)].rate.float(), torch.tensor(kept_step + j / 10), atol=1e-2)


def test_map_keeper_average():
    import torch

    from scfg_ext.capture import Cond
    from scfg_ext.guidance import MapKeeper

    keeper = MapKeeper("average", 0.5)
    for step, owner in enumerate([1, 3, 3]):
        regions = torch.zeros(4, 2, 2)
        regions[owner] = 1
        keeper.add(step / 3, {Cond(0): regions}, {Cond(0): torch.full((1, 2, 2), float(step))})
    kept = keeper.result()[Cond(0)]
    assert kept.owner.eq(3).all() and torch.allclose(kept.rate.float(), torch.tensor(1.0))
    assert kept.regions().shape == (4, 2, 2) and kept.regions()[3].eq(1).all()


def test_gallery_placement_with_a_grid_and_masks():
    """A1111 with "Show grid" (grid first, ``index_of_first_image`` 1) and "return mask" (a mask after each
    image): each map is drawn over its own image, and appended with that image's infotext."""
    import torch
    from PIL import Image

    from scfg_ext.capture import Cond
    from scfg_ext.guidance import KeptMaps
    from scfg_ext.webui import maps
    from scfg_ext.webui.prompts import PassPrompts

    grid, img0, mask0, img1, mask1 = (Image.new("RGB", (32, 32), (k * 40, 0, 0)) for k in range(5))
    processed = types.SimpleNamespace(images=[grid, img0, mask0, img1, mask1], index_of_first_image=1,
                                      infotexts=["grid", "i0", "m0", "i1", "m1"])
    p = types.SimpleNamespace(batch_size=2, n_iter=1, save_samples=lambda: False)
    kept = KeptMaps(torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.float16), 77)
    prompts = PassPrompts(0, 2, False, [["a"], ["b"]], [[None], [None]])
    drawn = []
    original = maps.picture
    maps.picture = lambda base, k, labels, title: drawn.append(base) or original(base, k, labels, title)
    try:
        maps.add_to_gallery(p, processed, [maps.PassMaps(p, prompts, {Cond(1, 0): kept, Cond(0, 0): kept})],
                            Settings(show_maps=True))
    finally:
        maps.picture = original
    assert drawn == [img0, img1]
    assert len(processed.images) == 7 and processed.infotexts[5:] == ["i0", "i1"]


# -- API args ----------------------------------------------------------------------------------------------------


def test_from_args_forms():
    assert Settings.from_args([]) == Settings()
    assert Settings.from_args(CUSTOM.as_list()) == CUSTOM
    assert Settings.from_args([True, 0.5]) == Settings(enabled=True, min_rate=0.5)  # short list: defaults
    assert Settings.from_args([True, 1, 3, 15]) == Settings(enabled=True, min_rate=1.0)  # JSON ints are numbers
    # the dict form, followed by the UI defaults the API fills the other slots with
    ui_defaults = [f.default for f in FIELDS]
    assert Settings.from_args([{"enabled": True, "max_rate": 2.5}, *ui_defaults[1:]]) == \
        Settings(enabled=True, max_rate=2.5)
    assert Settings.from_args([{"enabled": True, "max_rate": 2.5}]) == Settings(enabled=True, max_rate=2.5)
    assert Settings.from_args([{}]) == Settings()


def describe_range(name):
    f = next(f for f in FIELDS if f.name == name)
    return f.describe()


BAD_ARGS = [
    # (args, field named in the message, text that must appear)
    ([True, "2.5"], "min_rate", describe_range("min_rate")),
    ([{"max_rate": "2.5"}], "max_rate", describe_range("max_rate")),
    ([{"max_rate": True}], "max_rate", describe_range("max_rate")),
    ([{"max_rate": None}], "max_rate", describe_range("max_rate")),
    ([{"max_rate": 10.5}], "max_rate", describe_range("max_rate")),
    ([{"min_rate": -0.1}], "min_rate", describe_range("min_rate")),
    ([{"max_scale": float("nan")}], "max_scale", describe_range("max_scale")),
    ([{"max_scale": float("inf")}], "max_scale", describe_range("max_scale")),
    ([{"enabled": 1}], "enabled", "true or false"),
    ([{"enabled": "true"}], "enabled", "true or false"),
    ([{"refine": "mean"}], "refine", describe_range("refine")),
    ([True, 0.8, 3.0, 15.0, "official", "both"], "foreground", describe_range("foreground")),
    ([{"maxrate": 2.0}], "maxrate", "known settings: " + ", ".join(NAMES)),
    ([{"min_rate": 3.0, "max_rate": 2.0}], "min_rate", "must not exceed 'max_rate'"),
    ([{"start": 0.5, "end": 0.5}], "start", "must be less than 'end'"),
    ([{"word_weights": "horse 1.3"}], "word_weights", '"horse 1.3" is not "word: number"'),
    ([{"word_weights": "horse: 1.3, sky: -1"}], "word_weights", "between 0 and 10"),
    ([{"word_weights": 1.3}], "word_weights", "must be text"),
    ([{"show_maps": "yes"}], "show_maps", "true or false"),
    ([{"maps_step": "mid"}], "maps_step", describe_range("maps_step")),
    ([{"start": 0.9, "end": 0.2}], "start", "must be less than 'end'"),
    ([*CUSTOM.as_list(), 1], None, f"at most {len(FIELDS)} positional args"),
]


@pytest.mark.parametrize("args, name, text", BAD_ARGS)
def test_from_args_rejects(args, name, text):
    with pytest.raises(SettingsError) as e:
        Settings.from_args(args)
    message = str(e.value)
    assert text in message
    if name is not None:
        assert f"'{name}'" in message


def request(webui, args_entry, title="S-CFG", **kwargs):
    import modules.api.api as api_module

    return api_module.SimpleRequest(alwayson_scripts={title: args_entry}, **kwargs)


@pytest.mark.parametrize("entry, text", [
    ({"args": {"enabled": True}}, '"args" must be a list'),
    ({"args": "true"}, '"args" must be a list'),
    ([True, 2.0], 'must be an object like {"args": [...]}'),
    ("on", 'must be an object like {"args": [...]}'),
])
def test_validate_request_rejects_bad_shapes(webui, entry, text):
    with pytest.raises(SettingsError, match="S-CFG") as e:
        scfg_api.validate_request(request(webui, entry))
    assert text in str(e.value)


def test_validate_request_accepts(webui):
    assert scfg_api.validate_request(request(webui, {"args": [{"enabled": True, "max_rate": 2.5}]})) == \
        Settings(enabled=True, max_rate=2.5)
    assert scfg_api.validate_request(request(webui, {"args": [True, 0.5]}, title="s-cfg")) == \
        Settings(enabled=True, min_rate=0.5)
    assert scfg_api.validate_request(request(webui, {})) == Settings()  # no args: UI defaults
    import modules.api.api as api_module

    assert scfg_api.validate_request(api_module.SimpleRequest()) is None  # S-CFG not mentioned
    assert scfg_api.validate_request(api_module.SimpleRequest(alwayson_scripts={"X/Y/Z plot": {"args": [1]}})) is None


# -- the real request path ---------------------------------------------------------------------------------------


@pytest.fixture
def api(webui, api_module):
    """The API object the WebUI creates with ``--api``, then ``on_app_started``: our validator installed."""
    api = api_module.Api(txt2img_runner=webui.txt2img, img2img_runner=webui.img2img)
    webui.script_callbacks.app_started_callback(None, types.SimpleNamespace())
    assert getattr(api_module.Api.init_script_args, "_scfg_validator", False)
    return api


@pytest.mark.parametrize("args, name, text", [b for b in BAD_ARGS if b[1] is not None])
@pytest.mark.parametrize("is_img2img", [False, True])
def test_api_bad_request_is_422(api, args, name, text, is_img2img):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as e:
        api.script_args_for_request(request(None, {"args": args}), is_img2img=is_img2img)
    assert e.value.status_code == 422
    assert f"'{name}'" in e.value.detail and text in e.value.detail


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_api_dict_request_reaches_process(webui, small_unet, api, tab):
    runner = getattr(webui, tab)
    req = request(webui, {"args": [{"enabled": True, "max_rate": 2.5, "refine": "paper"}]})
    args = api.script_args_for_request(req, is_img2img=tab == "img2img")
    script = our_script(runner)
    assert args[script.args_from + 1:script.args_to] == tuple(f.default for f in FIELDS[1:])  # UI defaults filled in
    p = generation(webui, small_unet, runner, args)
    assert p.scfg_settings == Settings(enabled=True, max_rate=2.5, refine="paper")
    positional = api.script_args_for_request(request(webui, {"args": [True, 0.5]}, title="s-cfg"),
                                             is_img2img=tab == "img2img")
    assert generation(webui, small_unet, runner, positional).scfg_settings == Settings(enabled=True, min_rate=0.5)
    plain = api.script_args_for_request(request(webui, {"args": [False]}), is_img2img=tab == "img2img")
    assert generation(webui, small_unet, runner, plain).scfg_settings is None


def api_infotext_args(runner, text):
    """The script part of ``Api.apply_infotext`` (``modules/api/api.py`` @ 82a973c; trimmed in the stand-in): for
    each paste field whose component is a script input, ``field.function(params)`` if it has one, else
    ``params.get(field.label)``; converted with ``type(component.value)(value)`` unless already of that type (no
    ``on_infotext_pasted`` here). Returns ``mentioned_script_args`` {index in runner.inputs: value}."""
    import modules.infotext_utils as infotext_utils

    params = infotext_utils.parse_generation_parameters(text)
    mentioned = {}
    for component, target in runner.infotext_fields:
        field = infotext_utils.PasteField(component, target)
        value = field.function(params) if field.function else params.get(field.label)
        if value is None:
            continue
        target_type = type(component.value)
        if not isinstance(value, target_type):
            value = target_type(value)
        index = next(i for i, x in enumerate(runner.inputs) if x is component)
        mentioned[index] = value
    return mentioned


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_api_infotext_field_restores_settings(webui, small_unet, api, api_module, tab):
    """A request's ``infotext`` (A1111 1.8+) sets the script args through ``infotext_fields``: ``False`` stays
    False (``bool("False")`` is True), and a malformed value keeps the default instead of an HTTP 500."""
    runner = getattr(webui, tab)
    text = infotext_text(webui, generation(webui, small_unet, runner, script_args(runner, **CUSTOM.as_dict())))
    assert "S-CFG hires: False" in text

    def settings_from(infotext_text):
        args = api.script_args_for_request(api_module.SimpleRequest(infotext=infotext_text),
                                           is_img2img=tab == "img2img",
                                           infotext_script_args=api_infotext_args(runner, infotext_text))
        return generation(webui, small_unet, runner, args).scfg_settings

    assert settings_from(text) == CUSTOM
    bad = text.replace("S-CFG max rate: 2.5", "S-CFG max rate: abc").replace("S-CFG refine: paper", "S-CFG refine: x")
    assert settings_from(bad) == CUSTOM.replace(max_rate=3.0, refine="official")  # those two: API defaults
    assert settings_from("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7") is None  # no S-CFG: off


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_word_weights_round_trip_through_infotext_paste_and_api(webui, small_unet, api, api_module, tab):
    """Word weights hold commas and colons: the WebUI quotes them in the infotext; paste, "Send to" and the API's
    ``infotext`` field give back the same canonical text."""
    import modules.infotext_utils as infotext_utils

    runner = getattr(webui, tab)
    weights = 'horse: 1.3, (red shirt:1.2): 0, "sky": 0.5'
    settings = Settings(enabled=True, word_weights=weights, show_maps=True, maps_step="first")
    assert settings.word_weights == 'horse: 1.3, red shirt: 0, "sky": 0.5'  # canonical
    p = generation(webui, small_unet, runner, script_args(runner, **settings.as_dict()))
    text = infotext_text(webui, p)
    assert 'S-CFG word weights: "horse: 1.3, red shirt: 0, \\"sky\\": 0.5"' in text
    params = infotext_utils.parse_generation_parameters(text)
    assert params["S-CFG word weights"] == settings.word_weights
    values = pasted(webui, runner, text)
    assert values == settings.as_list()
    args = api.script_args_for_request(api_module.SimpleRequest(infotext=text), is_img2img=tab == "img2img",
                                       infotext_script_args=api_infotext_args(runner, text))
    assert generation(webui, small_unet, runner, args).scfg_settings == settings
    # no weights: no key; pasting that gives the empty text back
    plain = infotext_text(webui, generation(webui, small_unet, runner, script_args(runner, enabled=True)))
    assert "word weights" not in plain and pasted(webui, runner, plain)[FIELDS.index(FIELD_WEIGHTS)] == ""


FIELD_WEIGHTS = next(f for f in FIELDS if f.name == "word_weights")


def test_api_validator_install_is_not_stacked_and_undoes(webui, api_module):
    original = api_module.Api.init_script_args
    undo_first = scfg_api.install(api_module.Api, lambda m: ValueError(m))
    wrapper = api_module.Api.init_script_args
    undo_second = scfg_api.install(api_module.Api, lambda m: ValueError(m))  # reload without unload
    assert api_module.Api.init_script_args.__wrapped__ is original
    undo_first()  # stale undo: does nothing
    assert api_module.Api.init_script_args is not wrapper and api_module.Api.init_script_args is not original
    undo_second()
    assert api_module.Api.init_script_args is original


def test_script_info_lists_scfg(webui, api):
    infos = [i for i in api.get_script_info() if i.name == "s-cfg"]
    assert [i.is_img2img for i in infos] == [False, True]
    for info in infos:
        assert [a.label for a in info.args] == [f.label for f in FIELDS]
        rates = {a.label: (a.minimum, a.maximum, a.step) for a in info.args}
        for f in NUMBERS:
            assert rates[f.label] == (f.minimum, f.maximum, f.step)


# -- over HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture
def client(webui, api_module):
    """A FastAPI app with the WebUI's ``api_middleware`` (via ``Api(app)``), routes that run the script-args part
    of ``/sdapi/v1/txt2img`` and ``/sdapi/v1/script-info``, and ``on_app_started`` as the WebUI calls it."""
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    app, api = script_args_app(webui, api_module)
    @app.get("/sdapi/v1/script-info", response_model=list[api_module.models.ScriptInfo])
    def script_info():
        return api.get_script_info()

    webui.script_callbacks.app_started_callback(None, app)
    with TestClient(app) as c:
        yield c


def test_http_bad_request_is_422_naming_the_field(client):
    response = client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": {"S-CFG": {"args": [{"max_rate": 12}]}}})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "HTTPException"
    assert "'max_rate'" in body["detail"] and "from 0 to 10" in body["detail"] and "12" in body["detail"]
    response = client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": {"s-cfg": {"args": {"enabled": True}}}})
    assert response.status_code == 422 and '"args" must be a list' in response.json()["detail"]


def test_http_good_request(client):
    response = client.post("/sdapi/v1/txt2img",
                           json={"alwayson_scripts": {"S-CFG": {"args": [{"enabled": True, "max_rate": 2.5}]}}})
    assert response.status_code == 200, response.text
    args = response.json()["scfg_args"]
    assert args[0] == {"enabled": True, "max_rate": 2.5}
    assert Settings.from_args(args) == Settings(enabled=True, max_rate=2.5)
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})  # S-CFG not mentioned: UI defaults
    assert response.status_code == 200 and response.json()["scfg_args"] == [f.default for f in FIELDS]


def test_http_script_info(client):
    response = client.get("/sdapi/v1/script-info")
    assert response.status_code == 200
    ours = [i for i in response.json() if i["name"] == "s-cfg"]
    assert len(ours) == 2
    for info in ours:
        assert info["is_alwayson"] is True
        for arg, f in zip(info["args"], FIELDS, strict=True):
            assert arg["label"] == f.label and arg["value"] == f.default
            if f.kind is float:
                assert (arg["minimum"], arg["maximum"], arg["step"]) == (f.minimum, f.maximum, f.step)
            if f.kind is str:
                assert arg["choices"] == (list(f.choices) if f.choices else None)


def test_number_fields_are_finite_ranges():
    for f in NUMBERS:
        assert math.isfinite(f.minimum) and math.isfinite(f.maximum) and f.minimum <= f.default <= f.maximum


def test_xyz_axes_once_after_script_reload():
    """A reload runs ``load_scripts`` again: new xyz module, our script imported again; still one set.
    (Last in this module: it replaces the callbacks the ``webui`` fixture's load registered.)"""
    first = load_webui()
    second = load_webui()
    second.script_callbacks.before_ui_callback()
    assert second.xyz is not first.xyz
    assert len(our_axes(second.xyz)) == len(FIELDS)
    assert len(our_axes(first.xyz)) == len(FIELDS)
