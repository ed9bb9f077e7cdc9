"""Stand-in for Forge's U-Net patcher @ dfdcbab: ``backend/patcher/unet.py`` ``UnetPatcher.clone`` (:26-35) and
the ``backend/patcher/base.py`` ``set_model_*`` methods (:132-182) that S-CFG and the built-ins it stacks with
(Dynamic Thresholding, SAG, PAG) call, writing the same ``model_options`` keys. Loading, LoRA and memory
management are left out: the tests' patcher wraps a ``KModel`` stand-in (``backend/modules/k_model.py``)."""

import copy
import inspect


class UnetPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}

    # mirrors backend/patcher/unet.py:26-35 (the copied fields that exist here)
    def clone(self):
        n = UnetPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n

    # mirrors backend/patcher/base.py:132-138
    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            self.model_options["sampler_cfg_function"] = lambda args: sampler_cfg_function(
                args["cond"], args["uncond"], args["cond_scale"])  # Old way
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    # mirrors base.py:140-141 and set_model_options_post_cfg_function (base.py:37-41)
    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_post_cfg_function"] = \
            self.model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    # mirrors base.py:146-147
    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    # mirrors base.py:176-177 and set_model_options_patch_replace (base.py:15-35), in place
    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        replace = to.setdefault("patches_replace", {}).setdefault("attn1", {})
        block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        replace[block] = patch
