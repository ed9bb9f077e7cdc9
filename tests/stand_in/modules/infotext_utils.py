"""Stand-in for modules/infotext_utils.py @ A1111 v1.10.1 (82a973c).

Kept: re_param / re_imagesize, quote / unquote, PasteField, parse_generation_parameters
(the key/value parsing, Size-1/Size-2 split, defaults for missing keys, skip_fields),
get_override_settings, and the body of connect_paste's paste_func as `paste_values()`,
a plain function returning the list of gr.update dicts the UI would apply.
Trimmed: style extraction (only when shared.prompt_styles is set, which the stand-in never
does), the "Emphasis" key (needs parse_prompt_attention), infotext_versions.backcompat,
old hires-fix size restoration, params.txt fallback, image/button wiring.
"""

from __future__ import annotations

import json
import re

import gradio as gr

from modules import errors, script_callbacks, shared

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
type_of_gr_update = type(gr.update())


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): PasteField(component, target, *, api=None)
class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()

        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): quote(text) -- json-quotes only if it contains ',' '\n' or ':'
def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text

    return json.dumps(text, ensure_ascii=False)


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): unquote(text)
def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text

    try:
        return json.loads(text)
    except Exception:
        return text


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): parse_generation_parameters(x, skip_fields=None)
def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting

    res = {}

    prompt = ""
    negative_prompt = ""

    done_with_prompt = False

    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)

            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f'Error parsing "{k}: {v}"')

    if shared.opts.infotext_styles != "Ignore" and shared.prompt_styles is not None:
        found_styles, prompt_no_styles, negative_prompt_no_styles = shared.prompt_styles.extract_styles_from_prompt(
            prompt, negative_prompt
        )
        prompt, negative_prompt = prompt_no_styles, negative_prompt_no_styles
        if (shared.opts.infotext_styles == "Apply if any" and found_styles) or shared.opts.infotext_styles == "Apply":
            res["Styles array"] = found_styles

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    # Missing CLIP skip means it was set to 1 (the default)
    if "Clip skip" not in res:
        res["Clip skip"] = "1"

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"""<hypernet:{hypernet}:{res.get("Hypernet strength", "1.0")}>"""

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0

    # the remaining defaults upstream fills for missing keys, in upstream order
    # (restore_old_hires_fix_params runs between "Masked area padding" and "RNG"; trimmed)
    for key, default in (
        ("Hires sampler", "Use same sampler"),
        ("Hires schedule type", "Use same scheduler"),
        ("Hires checkpoint", "Use same checkpoint"),
        ("Hires prompt", ""),
        ("Hires negative prompt", ""),
        ("Mask mode", "Inpaint masked"),
        ("Masked content", "original"),
        ("Inpaint area", "Whole picture"),
        ("Masked area padding", 32),
        ("RNG", "GPU"),
        ("Schedule type", "Automatic"),
        ("Schedule max sigma", 0),
        ("Schedule min sigma", 0),
        ("Schedule rho", 0),
        ("VAE Encoder", "Full"),
        ("VAE Decoder", "Full"),
        ("FP8 weight", "Disable"),
    ):
        if key not in res:
            res[key] = default

    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    if "Refiner switch by sampling steps" not in res:
        res["Refiner switch by sampling steps"] = False

    for key in skip_fields:
        res.pop(key, None)

    return res


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): get_override_settings(params, *, skip_fields=None)
def get_override_settings(params, *, skip_fields=None):
    res = []

    mapping = [(info.infotext, k) for k, info in shared.opts.data_labels.items() if info.infotext]
    for param_name, setting_name in mapping:
        if param_name in (skip_fields or {}):
            continue

        v = params.get(param_name, None)
        if v is None:
            continue

        if setting_name == "sd_model_checkpoint" and shared.opts.disable_weights_auto_swap:
            continue

        v = shared.opts.cast_value(setting_name, v)
        current_value = getattr(shared.opts, setting_name, None)

        if v == current_value:
            continue

        res.append((param_name, setting_name, v))

    return res


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): connect_paste.<locals>.paste_func, minus the button wiring
# and the params.txt fallback for an empty prompt. paste_fields: [(component, "Key" | callable(params)), ...]
# Returns one gr.update() dict per field (an empty update = component left unchanged).
def paste_values(prompt, paste_fields):
    params = parse_generation_parameters(prompt)
    script_callbacks.infotext_pasted_callback(prompt, params)
    res = []

    for output, key in paste_fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)

        if v is None:
            res.append(gr.update())
        elif isinstance(v, type_of_gr_update):
            res.append(v)
        else:
            try:
                valtype = type(output.value)

                if valtype is bool and v == "False":
                    val = False
                elif valtype is int:
                    val = float(v)
                else:
                    val = valtype(v)

                res.append(gr.update(value=val))
            except Exception:
                res.append(gr.update())

    return res


# mirrors modules/infotext_utils.py @ v1.10.1 (82a973c): connect_paste_params_buttons, the "Send to <tab>" branch
# (binding.source_tabname set): a component-to-component copy of the fields whose *string* key is in
# paste_field_names. Returns [(source_component, destination_component), ...].
def send_to_pairs(source_fields, destination_fields, script_paste_field_names, *, send_seed=None):
    send_seed = shared.opts.send_seed if send_seed is None else send_seed
    paste_field_names = (
        ["Prompt", "Negative prompt", "Steps", "Face restoration"]
        + (["Seed"] if send_seed else [])
        + list(script_paste_field_names)
    )
    inputs = [field for field, name in source_fields if name in paste_field_names]
    outputs = [field for field, name in destination_fields if name in paste_field_names]
    return list(zip(inputs, outputs))
