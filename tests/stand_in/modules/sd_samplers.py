"""Stand-in for modules/sd_samplers.py @ A1111 v1.10.1 (82a973c): find_sampler_config / create_sampler over the
k-diffusion subset in the stand-in sd_samplers_kdiffusion (timesteps samplers and SDXL checks trimmed)."""

from modules import sd_samplers_kdiffusion

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers


# mirrors modules/sd_samplers.py @ v1.10.1 (82a973c): find_sampler_config(name)
def find_sampler_config(name):
    config = all_samplers_map.get(name) if name is not None else all_samplers[0]

    return config


# mirrors modules/sd_samplers.py @ v1.10.1 (82a973c): create_sampler(name, model) (the no_sdxl check trimmed)
def create_sampler(name, model):
    config = find_sampler_config(name)

    assert config is not None, f"bad sampler name: {name}"

    sampler = config.constructor(model)
    sampler.config = config

    return sampler
