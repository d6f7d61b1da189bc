"""Personalized face generation (paper §3.6): two jobs, one module each.

``face_region``: where the face of an image is (crop, pose, mask at the model's resolution) and
pasting a repainted crop back; ``pipeline``: the diffusion (G1 base image, G2 latent blending with
the reference's identity) as `DenseFaceGenerator` and the diffusers `DenseFacePipeline`.
``config``: their settings (the sampler fallbacks, ``denseface generate``'s flags), importable
without diffusers. The command itself (files, printing) is `denseface.cli`'s.
"""
