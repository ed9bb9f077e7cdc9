"""Our UI under Forge's gradio (4.40.0), built as ``ScfgScript.ui()`` builds it, with the Forge ``InputAccordion``
stand-in (tests/stand_in_forge). Not collected by the main suite (no ``test_`` prefix): it needs the gradio 4
environment, ``.venv-gradio4/bin/python -m pytest tests/forge_ui_check.py`` (``dev/setup.sh`` makes it);
tests/test_forge_ui.py runs it in a subprocess. Nothing from tests/stand_in (A1111, gradio 3) is imported here.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAND_IN_FORGE = Path(__file__).resolve().parent / "stand_in_forge"
sys.path.insert(0, str(STAND_IN_FORGE))

import gradio as gr  # noqa: E402
from modules import ui_components  # noqa: E402 - Forge's InputAccordion (+ its gradio_extensions repair)

from scfg_ext.settings import FIELDS, Settings  # noqa: E402
from scfg_ext.webui import controls, infotext  # noqa: E402

TITLE = "S-CFG"  # scfg_ext.webui.api.TITLE (api imports the WebUI)


def test_environment_is_forges():
    assert gr.__version__ == "4.40.0"
    assert not isinstance(ui_components.InputAccordion, type)  # a function in Forge (a class in A1111)


def elem_id_for(tab):
    """``Script.elem_id`` (modules/scripts.py @ Forge dfdcbab) for an AlwaysVisible script on ``tab``."""
    title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", TITLE.lower()))
    return lambda item_id: f"script_{tab}_{title}_{item_id}"


def build_ui(tab):
    """``ScfgScript.ui`` inside ``gr.Blocks()``; returns the components, ``infotext_fields``, ``paste_field_names``
    and the warnings raised (Forge's ``repair`` warns, then drops, any kwarg the component doesn't take)."""
    with warnings.catch_warnings(record=True) as caught, gr.Blocks() as demo:
        warnings.simplefilter("always")
        components = controls.build(gr, ui_components.InputAccordion, elem_id_for(tab))
        infotext_fields = list(zip(components, infotext.paste_keys(), strict=True))
        paste_field_names = list(infotext.KEYS)
    return demo, components, infotext_fields, paste_field_names, caught


def ancestors(block):
    out = []
    while block.parent is not None:
        block = block.parent
        out.append(block)
    return out


def test_ui_mirrors_script_ui():
    """What ``build_ui`` repeats is what scripts/scfg.py ``ui()`` does."""
    source = (ROOT / "scripts" / "scfg.py").read_text(encoding="utf-8")
    for line in ("components = controls.build(host.gr, host.InputAccordion, self.elem_id)",
                 "self.infotext_fields = list(zip(components, infotext.paste_keys(), strict=True))",
                 "self.paste_field_names = list(infotext.KEYS)"):
        assert line in source


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_components_follow_fields(tab):
    demo, components, _, _, caught = build_ui(tab)
    dropped = [str(w.message) for w in caught if issubclass(w.category, ui_components.GradioDeprecationWarning)]
    assert not dropped, dropped  # Forge would silently drop these kwargs
    assert len(components) == len(FIELDS)
    accordion = components[0]
    assert isinstance(accordion, ui_components.InputAccordionImpl) and isinstance(accordion, gr.Checkbox)
    assert accordion.elem_id == f"script_{tab}_scfg_scfg_enabled-checkbox" and accordion.visible is False
    assert isinstance(accordion.accordion, gr.Accordion)
    assert accordion.accordion.elem_id == f"script_{tab}_scfg_scfg_enabled" and accordion.accordion.open is False
    assert [c.elem_id for c in components[1:]] == [f"script_{tab}_scfg_scfg_{f.name}" for f in FIELDS[1:]]
    assert [c.label for c in components] == [f.label for f in FIELDS]
    assert [c.value for c in components] == [f.default for f in FIELDS]
    for c, f in zip(components, FIELDS, strict=True):
        assert type(c.value) is f.kind, f.name  # Forge's paste/API convert with type(component.value)
        block = "textbox" if f.free_text else {bool: "checkbox", float: "slider", str: "dropdown"}[f.kind]
        assert c.get_block_name() == block, f.name
        if f.kind is float:
            assert (c.minimum, c.maximum, c.step) == (f.minimum, f.maximum, f.step), f.name
        elif f.free_text:
            assert c.lines == 1 and c.placeholder, f.name
        elif f.kind is str:
            assert [value for _, value in c.choices] == list(f.choices), f.name  # gradio 4: (name, value) pairs
        if f.name != "enabled":
            assert "scfg-control" in c.elem_classes
            parents = ancestors(c)  # gradio puts form fields into a gr.Form inside the row
            assert any(isinstance(p, gr.Row) and "scfg-row" in p.elem_classes for p in parents), f.name
            assert accordion.accordion in parents, f.name  # inside the accordion
    # the page config gradio 4 serves (every component serializes)
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {c.elem_id for c in components} <= ids


def test_infotext_paste_keys_line_up():
    """Forge's ``connect_paste`` (modules/infotext_utils.py @ dfdcbab ``paste_func``): a callable key gives the
    value, converted with ``type(output.value)``; the pasted values are the generation's settings."""
    _, components, infotext_fields, paste_field_names, _ = build_ui("txt2img")
    assert [c for c, _ in infotext_fields] == components
    assert [str(key) for _, key in infotext_fields] == paste_field_names == [f.infotext for f in FIELDS]
    custom = Settings(enabled=True, min_rate=0.5, max_rate=2.5, max_scale=12.5, refine="paper",
                      foreground="uncond", start=0.1, end=0.85, hires=False, word_weights="horse: 1.3, red shirt: 0",
                      show_maps=True, maps_step="average")
    params = dict(infotext.write(custom))
    assert infotext.fill_pasted(params) == []
    pasted = []
    for output, key in infotext_fields:
        v = key(params)
        valtype = type(output.value)
        pasted.append(False if valtype is bool and v == "False" else valtype(v))
    assert pasted == custom.as_list()
    update = gr.update(value=pasted[0])  # what paste_func returns per field
    assert update["value"] is True
