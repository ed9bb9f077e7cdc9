"""A miniature captioned world and a miniature text-to-image diffusion model trained on it: ground truth for S-CFG.

* ``world``: seeded 32x32 RGB scenes of 1-3 coloured shapes on a plain ground, their captions ("a red circle
  and a blue square on grey"), the exact per-object and background masks, and ``check`` that reads a generated
  image back into objects (colour, shape) to tell whether it shows what its prompt asked for.
* ``model``: a word-level tokenizer laid out like CLIP's 77-token context, a tiny causal text encoder and the
  real ldm ``UNetModel`` (the code A1111 runs for SD1/SD2) in SD1.5's structure, shrunk, with cross-attention
  at latent/4 and in the latent/8 middle block, the levels S-CFG reads; trained by ``bench/train_miniature.py``
  with SD's noise schedule, so k-diffusion's ``CompVisDenoiser`` samples it like SD.

What it is evidence of: that S-CFG's machinery (capture, token regions, rates) reads the right maps from a real,
*trained* ldm U-Net, in a world where the right answer is known exactly; and what S-CFG does to the guidance
there. Its attention is grounded partly by training (``bench/train_miniature.py --grounding``: each word's
cross-attention on its object, self-attention within segments), since a model this small trained for minutes
does not grow the grounded attention large models have; so its region accuracy is not evidence about SD's
attention. The classifier-score norms per region and the images are not supervised. Not evidence about Stable
Diffusion's quality, real CLIP embeddings or natural images.
"""
