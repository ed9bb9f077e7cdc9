"""Stand-in for Forge ``backend/nn/unet.py`` @ dfdcbab: the transformer block's patch dispatch
(``BasicTransformerBlock._forward``, :183-279: attention replace patches and ``extra_options``), installed on a
real ldm U-Net's blocks so that weights and shapes are real. Forge's ``IntegratedUNet2DConditionModel.forward``
passes ``transformer_options`` down to every block, with ``block`` = ("input" | "middle" | "output", index)
(:697-734); ldm's U-Net does not, so the current options are held in ``OPTIONS`` during a call."""

import contextlib

OPTIONS = {}


@contextlib.contextmanager
def transformer_options(options):
    """What ``forward(..., transformer_options=...)`` carries down the U-Net, for one call."""
    global OPTIONS
    saved, OPTIONS = OPTIONS, options
    try:
        yield
    finally:
        OPTIONS = saved


def install_patch_dispatch(unet):
    """Give every ldm ``BasicTransformerBlock`` of ``unet`` Forge's ``_forward``."""
    places = [("input", i, b) for i, b in enumerate(unet.input_blocks)] + [("middle", 0, unet.middle_block)] + \
        [("output", i, b) for i, b in enumerate(unet.output_blocks)]
    for name, i, block in places:
        for module in block.modules():
            for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                transformer._forward = forge_forward(transformer, (name, i), index)


def forge_forward(self, block, block_index):
    # mirrors backend/nn/unet.py:183-279, for the branches the tests use: attn1/attn2 replace and plain calls
    def _forward(x, context=None):
        extra_options = {k: v for k, v in OPTIONS.items() if k not in ("patches", "patches_replace")}
        extra_options.update(block=block, block_index=block_index, n_heads=self.attn1.heads,
                             dim_head=self.attn1.to_q.out_features // self.attn1.heads)
        replace = OPTIONS.get("patches_replace", {})
        n = self.norm1(x)
        context_attn1 = context if self.disable_self_attn else None
        attn1_replace_patch = replace.get("attn1", {})
        block_attn1 = (block[0], block[1], block_index)
        if block_attn1 not in attn1_replace_patch:
            block_attn1 = block
        if block_attn1 in attn1_replace_patch:
            if context_attn1 is None:
                context_attn1 = n
            value_attn1 = context_attn1
            n = self.attn1.to_q(n)
            context_attn1 = self.attn1.to_k(context_attn1)
            value_attn1 = self.attn1.to_v(value_attn1)
            n = attn1_replace_patch[block_attn1](n, context_attn1, value_attn1, extra_options)
            n = self.attn1.to_out(n)
        else:
            n = self.attn1(n, context=context_attn1)
        x = x + n
        x = x + self.attn2(self.norm2(x), context=context)
        return self.ff(self.norm3(x)) + x

    return _forward
