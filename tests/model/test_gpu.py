"""GPU smoke: Dense-Face on an SD-2.1-shaped UNet (random weights, fp16) at 512 px; skipped without CUDA.

Why: the CPU tests use a tiny UNet; this checks the real layout (4 levels, 1024-d text, 64x64
latents, 512 px pose image), mixed dtypes (fp16 frozen SD, fp32 new modules) and memory.
"""

from __future__ import annotations

import time

import pytest
import torch

from denseface.model.tiny_sd import sd21_unet_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SD21_UNET = sd21_unet_config()


def test_sd21_shaped_train_step_fp16():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from denseface.model.dense_face import DenseFace, DenseFaceConfig
    from denseface.model.tiny_sd import build_tiny_tokenizer

    dev = torch.device("cuda")
    tok = build_tiny_tokenizer()
    with dev:
        unet = UNet2DConditionModel(**SD21_UNET).half()
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=1024,
                                          num_hidden_layers=1, num_attention_heads=16, max_position_embeddings=77,
                                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id)).half()
    model = DenseFace(unet, te, tok, DenseFaceConfig(id_dim=512)).to(dev)
    print(f"\ntrainable params: {sum(p.numel() for p in model.trainable_parameters()) / 1e6:.1f} M")
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-6)
    for batch in (2, 8):
        g = torch.Generator(dev).manual_seed(0)
        x = torch.randn(batch, 4, 64, 64, device=dev, generator=g).half()
        t = torch.randint(0, 1000, (batch,), device=dev, generator=g)
        ids = torch.randn(batch, 512, device=dev, generator=g)
        prompts = [model.prompt_for("a photo of a smiling man", identity=True)] * batch
        pose = torch.rand(batch, 3, 512, 512, device=dev, generator=g)
        torch.cuda.reset_peak_memory_stats()
        for step in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            eps, dense = model(x, t, model.encode_text(prompts, ids).half(), pose, mode="G2")
            assert dense["landmarks"].shape == (batch, 478, 64, 64) and dense["mask"].shape == (batch, 10, 64, 64)
            loss = (eps.float() - x.float()).pow(2).mean() + sum(v.float().pow(2).mean() for v in dense.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            assert torch.isfinite(loss)
            print(f"B={batch} step {step}: {time.perf_counter() - t0:.3f} s loss {loss.item():.4f}")
        print(f"B={batch} peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        assert all(p.grad is None for p in unet.parameters())
        assert all(p.grad is not None for p in model.trainable_parameters())
        with torch.no_grad():
            c = model.encode_text([model.prompt_for("a photo of a smiling man", identity=False)] * batch)
            plain = unet(x, t, encoder_hidden_states=c).sample
            g1, _ = model(x, t, c, mode="G1")
        assert torch.equal(g1, plain)
