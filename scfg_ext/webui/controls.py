"""The S-CFG accordion, built from ``settings.FIELDS`` (so the component order is the API's arg order)."""

from __future__ import annotations

import json

from ..settings import FIELD_BY_NAME, FIELDS

# rows of the compact layout, by field name; every field except "enabled" (the accordion's own box) once
LAYOUT = (("min_rate", "max_rate", "max_scale"), ("refine", "foreground"), ("start", "end", "hires"),
          ("word_weights",), ("show_maps", "maps_step"))
assert sorted(n for row in LAYOUT for n in row) == sorted(f.name for f in FIELDS[1:])


def elem_suffix(name: str) -> str:
    return f"scfg_{name}"


def build(gr, input_accordion, elem_id) -> list:
    """Build the accordion inside the current ``gr.Blocks``; return its components in ``FIELDS`` order.

    ``elem_id(suffix)`` is the script's ``Script.elem_id`` (``script_<tab>_s-cfg_<suffix>``), which the hint
    script in ``javascript/`` keys on.
    """
    enabled_field = FIELD_BY_NAME["enabled"]
    made = {}
    enabled_id = elem_id(elem_suffix("enabled"))
    with input_accordion(enabled_field.default, label=enabled_field.label, elem_id=enabled_id) as enabled:
        made["enabled"] = enabled
        for row in LAYOUT:
            with gr.Row(elem_classes=["scfg-row"]):
                for name in row:
                    made[name] = _component(gr, FIELD_BY_NAME[name], elem_id(elem_suffix(name)))
    return [made[f.name] for f in FIELDS]


def _component(gr, field, elem_id):
    common = dict(label=field.label, value=field.default, elem_id=elem_id, elem_classes=["scfg-control"])
    if field.kind is bool:
        return gr.Checkbox(**common)
    if field.free_text:
        return gr.Textbox(lines=1, placeholder="horse: 1.3, sky: 0.7, red shirt: 1.2", **common)
    if field.kind is str:
        return gr.Dropdown(choices=list(field.choices), type="value", **common)
    return gr.Slider(minimum=field.minimum, maximum=field.maximum, step=field.step, **common)


def hints_js() -> str:
    """The content of ``javascript/scfg_hints.js``: each control's hint as its tooltip (generated from
    ``FIELDS``; a test keeps the committed file equal to this).

    The accordion's hint goes on its header only: a title on the accordion element itself would show on hover
    anywhere in its body, between the other controls. Titles are re-applied (written only when different) after
    each UI update, so elements gradio or ``inputAccordion.js`` add later (the header's checkbox) get theirs."""
    entries = "\n".join(f"    {json.dumps(elem_suffix(f.name))}: {json.dumps(f.hint, ensure_ascii=False)},"
                         for f in FIELDS)
    return f"""// Generated from scfg_ext/settings.py FIELDS by scfg_ext.webui.controls.hints_js(); do not edit.
// Tooltips for the S-CFG accordion: the browser shows an element's title attribute on hover.
(function () {{
  const scfgHints = {{
{entries}
  }};

  function scfgApplyHints() {{
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    for (const [suffix, hint] of Object.entries(scfgHints)) {{
      app.querySelectorAll(`[id$="_${{suffix}}"], [id$="_${{suffix}}-checkbox"]`).forEach((el) => {{
        const target = el.querySelector(":scope > .label-wrap") || el; // InputAccordion: its header only
        for (const node of [target, ...target.querySelectorAll("label, span, input, select, textarea")]) {{
          if (node.title !== hint) node.title = hint;
        }}
      }});
    }}
  }}

  if (typeof onAfterUiUpdate === "function") {{
    onAfterUiUpdate(scfgApplyHints); // debounced: not on every DOM mutation of the WebUI
  }} else if (typeof onUiUpdate === "function") {{
    onUiUpdate(scfgApplyHints);
  }} else {{
    document.addEventListener("DOMContentLoaded", scfgApplyHints);
  }}
}})();
"""
