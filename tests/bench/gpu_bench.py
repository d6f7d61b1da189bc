"""The measurements of ``make bench-gpu``, at a given shape, on a given device.

`tests/bench/test_gpu_bench.py` runs them on CUDA at SD-2.1-base shape (bf16, batch 8,
512 px, full-size models of random weights: a step's cost does not depend on the values);
`tests/bench/test_gpu_bench_cpu.py` runs the very same code on the CPU with tiny shapes, so the
command is known to work before a GPU is lent. Every figure is measured in the same run as
its baseline.

* training step: Dense-Face (images through the VAE, and with cached latents, as the
  optional ``latent.npy`` gives them) vs plain full-UNet fine-tuning vs diffusers ControlNet
  training (frozen UNet, the nearest peer), all with the same VAE and text encoding;
* ETL model stages in images/s at a batch size: CodeFormer (512 px), Hopenet (ResNet-50,
  224 px), ArcFace IR-SE50 (112 px), dlib's face ResNet in torch (150 px chips), the latent
  stage's VAE encoder (512 px, fp32), ArcFace R50
  as an ONNX graph under onnxruntime, the caption stage's captioners at their published sizes
  and CLIP ViT-L/14 scoring (`tests/bench/annotation_models.py`), and from these the GPU-hours
  to annotate the paper's 2 M images.
"""
from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    device: str
    resolution: int
    batch: int
    full_size: bool  # SD-2.1-base / published architectures, else tiny ones
    dtype: torch.dtype = torch.float32  # autocast dtype of the training steps
    stage_batch: int = 32
    caption_tokens: int = 30  # the caption stage's default max_new_tokens


FULL = Shape("cuda", 512, 8, True, torch.bfloat16)
TINY = Shape("cpu", 64, 2, False, torch.float32, stage_batch=2, caption_tokens=3)
PAPER_IMAGES = 2_000_000  # T2I-Dense-Face's size


def timed(step: Callable[[], Any], device: str, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds of ``step`` after one warm-up, and the peak memory (GiB,
    CUDA only) over the timed calls."""
    cuda = device.startswith("cuda")
    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"ms": best * 1e3, "peak_gib": peak}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sd(shape: Shape, dtype: torch.dtype = torch.float32):
    from denseface.model.tiny_sd import build_random_sd21, build_tiny_sd

    if shape.full_size:
        return build_random_sd21(shape.device, dtype)
    sd = build_tiny_sd(0)
    for m in (sd.unet, sd.vae, sd.text_encoder):
        m.to(shape.device, dtype)
    return sd


def _autocast(shape: Shape):
    return torch.autocast(shape.device.split(":")[0], dtype=shape.dtype, enabled=shape.dtype != torch.float32)


def train_step_figures(shape: Shape, dataset: str, work: Path) -> dict[str, dict[str, float]]:
    from denseface.train.config import TrainConfig
    from denseface.train.loop import Trainer

    figures: dict[str, dict[str, float]] = {}
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(shape.dtype, "no")
    cfg = TrainConfig(data=[dataset], output_dir=work / "run", id_index=work / "index", batch_size=shape.batch,
                      resolution=shape.resolution, num_workers=0, tensorboard=False, progress=False,
                      mixed_precision=precision, cpu=shape.device == "cpu", lr=1e-5)
    trainer = Trainer(cfg, sd=_sd(shape))
    batch = trainer.to_device(next(iter(trainer.train_loader())))
    figures["Dense-Face"] = timed(lambda: trainer.train_step(batch), shape.device)
    with torch.no_grad():  # what the optional latent stage stores: the posterior mean, unscaled
        vae = trainer.sd.vae
        latent = vae.encode(batch["image"].to(vae.dtype)).latent_dist.mean.float()
    cached = {**batch, "latent": latent, "has_latent": torch.ones(len(latent), dtype=torch.bool, device=latent.device)}
    figures["Dense-Face, cached latents"] = timed(lambda: trainer.train_step(cached), shape.device)
    n_dense = sum(p.numel() for p in trainer.params)
    images, pose, captions = batch["image"], batch["pose_image"], batch["caption"]
    trainer = batch = cached = None  # released (None, not del: closures above hold the names)
    free_memory()

    sd = _sd(shape, shape.dtype)  # frozen parts in the autocast dtype, as the trainer holds them

    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z = sd.vae.encode(images.to(sd.vae.dtype)).latent_dist.sample().float() * sd.vae.config.scaling_factor
            tok = sd.tokenizer(captions, padding="max_length", max_length=sd.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            text = sd.text_encoder(tok.input_ids.to(shape.device))[0]
        return z, text

    def peer_step(unet, trained: list[torch.nn.Parameter], opt, control=None) -> None:
        z, text = encode()
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (len(z),), device=z.device)
        noisy = sd.scheduler.add_noise(z, noise, t)
        with _autocast(shape):
            extra = {}
            if control is not None:
                down, mid = control(noisy, t, encoder_hidden_states=text, controlnet_cond=pose, return_dict=False)
                extra = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
            pred = unet(noisy, t, encoder_hidden_states=text, **extra).sample
        F.mse_loss(pred.float(), noise).backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    unet = copy.deepcopy(sd.unet).float().train().requires_grad_(True)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    figures["full-UNet fine-tuning"] = timed(lambda: peer_step(unet, params, opt), shape.device)
    n_full = sum(p.numel() for p in params)
    unet = params = opt = None
    free_memory()

    from diffusers import ControlNetModel

    control = ControlNetModel.from_unet(sd.unet).float().train().requires_grad_(True)
    sd.unet.requires_grad_(False)
    params = list(control.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    figures["ControlNet (frozen UNet)"] = timed(lambda: peer_step(sd.unet, params, opt, control), shape.device)
    n_control = sum(p.numel() for p in params)
    control = params = opt = sd = None
    free_memory()
    for name, n in (("Dense-Face", n_dense), ("Dense-Face, cached latents", n_dense),
                    ("full-UNet fine-tuning", n_full), ("ControlNet (frozen UNet)", n_control)):
        figures[name]["trained_m"] = n / 1e6
    return figures


def stage_figures(shape: Shape, work: Path) -> dict[str, float]:
    """Images/s of the ETL's GPU model stages at ``shape.stage_batch``: torch models, ArcFace R50
    through onnxruntime (`ArcFaceOnnx`, the stage's own runner), each captioner generating
    ``caption_tokens`` tokens, and CLIP scoring every captioner's caption of each image."""
    from denseface.annotators.identity import DLIB_RECOGNITION, ArcFaceOnnx, dlib_weights_dir
    from denseface.model.codeformer import CodeFormer
    from denseface.model.dlib_resnet import DlibFaceResNet
    from denseface.model.hopenet import Hopenet
    from denseface.model.irse50 import IRSE50
    from tests.bench import annotation_models as am

    tiny_codeformer = dict(nf=4, ch_mult=(1, 1, 2, 2, 4, 4), norm_groups=4, emb_dim=16, dim_embd=32, n_head=4,
                           n_layers=1, codebook_size=16, img_size=64, latent_size=None, connect_list=("16", "32"))
    half = shape.dtype if shape.device != "cpu" else torch.float32
    models = {
        "CodeFormer": (CodeFormer() if shape.full_size else CodeFormer(**tiny_codeformer),
                       512 if shape.full_size else 64, "nchw"),
        "Hopenet (ResNet-50)": (Hopenet(), 224, "nchw"),  # its pooling needs 224 px
        "ArcFace IR-SE50 (torch)": (IRSE50(), 112, "nchw"),
        "dlib face ResNet (torch)": (DlibFaceResNet.load(dlib_weights_dir(None) / DLIB_RECOGNITION), 150, "nhwc"),
    }
    out = {}

    def rate(run: Callable[[], Any]) -> float:
        return shape.stage_batch / (timed(run, shape.device)["ms"] / 1e3)

    for name, (net, size, layout) in models.items():
        net = net.to(shape.device).eval()
        if layout == "nchw":
            net = net.to(half)
            x = torch.randn(shape.stage_batch, 3, size, size, device=shape.device, dtype=half)
        else:
            x = torch.randint(0, 256, (shape.stage_batch, size, size, 3), dtype=torch.uint8, device=shape.device)

        def run(net=net, x=x) -> None:
            with torch.inference_mode():
                net(x)

        out[name] = rate(run)
        del net, x
        free_memory()

    from diffusers import AutoencoderKL

    from denseface.model.tiny_sd import sd21_vae_config, tiny_vae_config

    # the latent stage's encoder alone (not a whole SD), in fp32 as the stage runs it
    vae = AutoencoderKL(**(sd21_vae_config() if shape.full_size else tiny_vae_config())).to(shape.device).eval()
    pixels = torch.randn(shape.stage_batch, 3, shape.resolution, shape.resolution, device=shape.device)

    def encode() -> None:
        with torch.inference_mode():
            vae.encode(pixels).latent_dist.mean

    out[f"VAE encoder (latent stage, {shape.resolution} px, fp32)"] = rate(encode)
    vae = pixels = None
    free_memory()

    tiny_r50 = {} if shape.full_size else am.TINY_IRESNET
    r50 = am.write_iresnet_onnx(work / "r50.onnx", **tiny_r50)
    arcface = ArcFaceOnnx(r50, use_gpu=shape.device.startswith("cuda"))
    crops = list(np.random.default_rng(0).integers(0, 256, (shape.stage_batch, 112, 112, 3), dtype=np.uint8))
    out[f"ArcFace R50 (ONNX, {arcface.session.get_providers()[0].removesuffix('ExecutionProvider')})"] = rate(
        lambda: arcface(crops))
    arcface = None

    caption_dtype = torch.float16 if shape.device != "cpu" else torch.float32  # as the caption stage runs them
    for name in (*am.CAPTIONERS, am.CLIP):
        model = am.build(name, shape.full_size, shape.device, caption_dtype)
        size = am.image_size(model)
        pixels = torch.randn(shape.stage_batch, 3, size, size, device=shape.device, dtype=caption_dtype)
        if name == am.CLIP:
            out[f"CLIP scoring ({name}, {len(am.CAPTIONERS)} captions)"] = rate(
                lambda: am.clip_score_batch(model, pixels, len(am.CAPTIONERS), shape.caption_tokens + 2))
        else:
            out[f"caption {name}"] = rate(lambda: am.generate_fixed_length(model, pixels, shape.caption_tokens))
        model = pixels = None
        free_memory()
    return out


def gpu_hours(stages: dict[str, float], device: str, images: int = PAPER_IMAGES) -> tuple[float, list[str]]:
    """Hours of ``device`` to annotate ``images``, one stage after another: ``images`` x the sum of
    1 / (images/s) over the annotating stages. One identity network is counted: ArcFace R50 when
    onnxruntime ran it on ``device`` (a CPU-only onnxruntime on a GPU machine does not), else
    IR-SE50 in torch, its equal in architecture class; the dlib ResNet is the CPU default's."""
    provider = "CUDA" if device.startswith("cuda") else "CPU"
    onnx = [name for name in stages if name.startswith("ArcFace R50 (ONNX")]
    identity = onnx[0] if onnx and onnx[0].endswith(f", {provider})") else "ArcFace IR-SE50 (torch)"
    alternatives = {*onnx, "ArcFace IR-SE50 (torch)", "dlib face ResNet (torch)"} - {identity}
    summed = [name for name in stages if name not in alternatives]
    return images * sum(1 / stages[name] for name in summed) / 3600, summed


def report(shape: Shape, train: dict[str, dict[str, float]], stages: dict[str, float]) -> str:
    name = torch.cuda.get_device_name() if shape.device.startswith("cuda") else "CPU"
    lines = [f"{name}: training step at {shape.resolution} px, batch {shape.batch}, {shape.dtype} autocast "
             f"({'SD-2.1-base shape' if shape.full_size else 'tiny shapes'}, random weights)",
             f"{'what':30s} {'ms/step':>9s} {'peak GiB':>9s} {'trained M':>10s} {'x ControlNet':>13s}"]
    ref = train["ControlNet (frozen UNet)"]["ms"]
    for what, f in train.items():
        lines.append(f"{what:30s} {f['ms']:9.1f} {f['peak_gib']:9.2f} {f['trained_m']:10.1f} {f['ms'] / ref:13.2f}")
    lines.append(f"cached latents / VAE every step: "
                 f"{train['Dense-Face, cached latents']['ms'] / train['Dense-Face']['ms']:.2f}")
    lines.append(f"ETL model stages, batch {shape.stage_batch} ({'published sizes' if shape.full_size else 'tiny'}):")
    lines += [f"  {what:48s} {rate:9.1f} images/s  {1e3 / rate:8.2f} ms/image" for what, rate in stages.items()]
    hours, summed = gpu_hours(stages, shape.device)
    lines.append(f"{'GPU' if shape.device.startswith('cuda') else 'CPU'}-hours to annotate {PAPER_IMAGES / 1e6:g} M "
                 f"images, stages in turn: {hours:,.0f} (sum of: {', '.join(summed)})")
    return "\n".join(lines)
