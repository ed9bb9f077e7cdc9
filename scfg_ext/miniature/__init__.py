"""A miniature captioned world and a miniature text-to-image diffusion model trained on it: ground truth for S-CFG.

* ``world``: seeded 32x32 RGB scenes of 1-3 coloured shapes on a plain ground, their captions ("a red circle
  and a blue square on grey"), the exact per-object and background masks, and ``check`` that reads a generated
  image back into objects (colour, shape) to tell whether it shows what its prompt asked for.
* ``model``: a word-level tokenizer laid out like CLIP's 77-token context, a tiny causal text encoder and the
  real ldm ``UNetModel`` (the code A1111 runs for SD1/SD2) in SD1.5's structure, shrunk, with cross-attention
  at latent/4 and in the latent/8 middle block, the levels S-CFG reads; trained by ``bench/train_miniature.py``
  with SD's noise schedule, so k-diffusion's ``CompVisDenoiser`` samples it like SD.

What it is evidence of: that S-CFG's machinery (capture, token regions, rates) runs on a real, *trained* ldm
U-Net whose attention means something, and how well the token regions match exact ground-truth masks in a world
where the right answer is known. What it is not: evidence about Stable Diffusion's quality, about real CLIP
embeddings or about natural images; a model this small, trained for minutes on a CPU, binds words to regions far
less cleanly than SD, so its numbers are a lower-level sanity check, not a stand-in for a user study.
"""
