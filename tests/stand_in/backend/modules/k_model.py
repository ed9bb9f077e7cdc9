"""Stand-in for Forge ``backend/modules/k_model.py`` @ dfdcbab: ``KModel.apply_model`` (:25-46), the U-Net
call of one batch of chunks, in the denoised (x0) space. k-diffusion's ``CompVisDenoiser`` does the same
sigma scaling as Forge's predictor (``calculate_input``, ``timestep``, ``calculate_denoised``)."""

from backend.nn.unet import transformer_options as carried


class KModel:
    def __init__(self, denoiser):
        self.denoiser = denoiser  # k_diffusion.external.CompVisDenoiser around the ldm model
        self.diffusion_model = denoiser.inner_model.model.diffusion_model

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        with carried(transformer_options):
            return self.denoiser(x, t, cond={"c_crossattn": [c_crossattn]}).float()
