"""Seconds per personalized image at 512 px on a GPU (issue 5), with an SD-2.1-base-shaped
model of random weights: the real SD 2.1 and Dense-Face weights cannot be downloaded here,
and the time of a forward pass does not depend on the values of the weights. Prints G1
(plain SD, 25 DDIM steps, CFG) and G2 (Dense-Face with latent blending) side by side, both
measured in this run. Skipped without CUDA."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.bench, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_seconds_per_personalized_image_at_512():
    from denseface.generation.face_region import FaceRegion, square_quad
    from denseface.generation.pipeline import UNTRAINED_CONFIG, DenseFaceGenerator
    from denseface.model.dense_face import DenseFace
    from denseface.model.tiny_sd import build_random_sd21

    dtype = torch.float16
    sd = build_random_sd21("cuda", dtype)
    model = DenseFace.from_sd(sd, UNTRAINED_CONFIG)
    model.trainable_modules().to("cuda", dtype)
    model.eval()
    gen = DenseFaceGenerator(sd, model, id_backend="dlib")
    yy, xx = np.mgrid[:512, :512]
    mask = ((xx - 256) / 150) ** 2 + ((yy - 270) / 190) ** 2 <= 1.0
    id_emb = np.random.default_rng(0).standard_normal(128).astype(np.float32)

    def g1(steps: int) -> np.ndarray:
        return gen.text_to_image("a photo of a person in a park", steps=steps, guidance=7.5, seed=0)

    def g2(base: np.ndarray, steps: int) -> None:
        region = FaceRegion("box", square_quad(256, 256, 512), np.eye(2, 3), base, mask, 10.0, 5.0, 0.0)
        gen.repaint(region, id_emb, "a photo of a person in a park", steps=steps, guidance=7.5, seed=0)

    g2(g1(2), 2)  # warm-up: kernels, allocator
    rows = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        base = g1(25)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        g2(base, 25)
        torch.cuda.synchronize()
        rows.append((t1 - t0, time.perf_counter() - t1))
    g1_s, g2_s = (float(np.median(c)) for c in zip(*rows))
    print(f"\n{torch.cuda.get_device_name()}, fp16, 512 px, 25 DDIM steps, CFG 7.5 (median of 3)")
    print(f"G1 base image (plain SD):             {g1_s:6.2f} s")
    print(f"G2 face repaint (Dense-Face + blend): {g2_s:6.2f} s   ({g2_s / g1_s:.2f}x G1)")
    print(f"personalized image, G1 + G2:          {g1_s + g2_s:6.2f} s (face detection/identity on CPU not included)")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
