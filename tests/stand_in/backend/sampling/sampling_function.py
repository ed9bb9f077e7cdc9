"""Stand-in for Forge ``backend/sampling/sampling_function.py`` @ dfdcbab: how the U-Net calls of one
denoiser step are batched and combined. Whole-latent conds only (no areas, masks, ControlNet or
conditioning modifiers); ``MAX_CHUNKS_PER_CALL`` stands in for the free-memory test that splits a batch."""

import collections
import math

import torch

from backend.sampling.condition import compile_conditions, compile_weighted_conditions

MAX_CHUNKS_PER_CALL = None  # None: memory for every chunk at once; n: at most n chunks per U-Net call


# mirrors sampling_function.py:17-73 for whole-latent conds without mask or area
def get_area_and_mult(conds, x_in, timestep_in):
    area = (x_in.shape[2], x_in.shape[3], 0, 0)
    strength = conds.get('strength', 1.0)
    input_x = x_in
    mult = torch.ones_like(input_x) * strength
    conditioning = {}
    model_conds = conds["model_conds"]
    for c in model_conds:
        conditioning[c] = model_conds[c].process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
    cond_obj = collections.namedtuple('cond_obj', ['input_x', 'mult', 'conditioning', 'area', 'control', 'patches'])
    return cond_obj(input_x, mult, conditioning, area, None, None)


# mirrors sampling_function.py:76-105 (control and patches are always None here)
def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    if c1.conditioning.keys() != c2.conditioning.keys():
        return False
    return all(c1.conditioning[k].can_concat(c2.conditioning[k]) for k in c1.conditioning)


# mirrors sampling_function.py:108-126
def cond_cat(c_list):
    temp = {}
    for x in c_list:
        for k in x:
            temp.setdefault(k, []).append(x[k])
    return {k: conds[0].concat(conds[1:]) for k, conds in temp.items()}


# mirrors sampling_function.py:153-289 (calc_cond_uncond_batch)
def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37

    COND = 0
    UNCOND = 1

    to_run = []
    for x in cond:
        to_run += [(get_area_and_mult(x, x_in, timestep), COND)]
    if uncond is not None:
        for x in uncond:
            to_run += [(get_area_and_mult(x, x_in, timestep), UNCOND)]

    while len(to_run) > 0:
        first = to_run[0]
        to_batch_temp = []
        for x in range(len(to_run)):
            if can_concat_cond(to_run[x][0], first[0]):
                to_batch_temp += [x]

        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        for i in range(1, len(to_batch_temp) + 1):  # the first prefix that fits the free memory
            batch_amount = to_batch_temp[:len(to_batch_temp) // i]
            if MAX_CHUNKS_PER_CALL is None or len(batch_amount) <= MAX_CHUNKS_PER_CALL:
                to_batch = batch_amount
                break

        input_x, mult, c, cond_or_uncond = [], [], [], []
        for x in to_batch:
            o = to_run.pop(x)
            p = o[0]
            input_x.append(p.input_x)
            mult.append(p.mult)
            c.append(p.conditioning)
            cond_or_uncond.append(o[1])

        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)

        transformer_options = {}
        if 'transformer_options' in model_options:
            transformer_options = model_options['transformer_options'].copy()
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        c['transformer_options'] = transformer_options

        if 'model_function_wrapper' in model_options:
            output = model_options['model_function_wrapper'](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)

        for o in range(batch_chunks):
            if cond_or_uncond[o] == COND:
                out_cond += output[o] * mult[o]
                out_count += mult[o]
            else:
                out_uncond += output[o] * mult[o]
                out_uncond_count += mult[o]

    out_cond /= out_count
    out_uncond /= out_uncond_count
    return out_cond, out_uncond


# mirrors sampling_function.py:292-324
def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None,
                            return_full=False):
    edit_strength = sum(item.get('strength', 1) for item in cond)

    if math.isclose(cond_scale, 1.0) and model_options.get("disable_cfg1_optimization", False) == False:  # noqa: E712
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred

    return cfg_result


# mirrors sampling_function.py:327-363 (no extra concat condition, image cond or ControlNet)
def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, return_full=True)
