"""The Dense-Face training loop (paper §3.5) on `accelerate`: one process per GPU, DDP across
GPUs and nodes (``accelerate launch``), or one CPU process for the tiny demo model.

Only the new modules train (pose branch, identity MLP, PC-adapters, dense heads); SD's UNet,
VAE and text encoder are frozen and, under mixed precision, held in fp16/bf16 (the VAE stays
fp32: it only runs when a sample has no ``latent.npy``). Each step: latents (cached or VAE),
the text condition of the caption with the identity token (through the frozen text encoder, so
the identity MLP gets its gradient through it; a dropped caption is the plain empty prompt, no
identity: what generation's unconditional branch feeds), noise and t ~ U[0, T) from the trainer's
own generator, one G2 forward giving eps and the dense maps, Eq. 8, AdamW.

The data loader is not passed through ``accelerator.prepare``: for an IterableDataset it would
read on rank 0 and dispatch batches, while here every rank reads its own shards
(`denseface.train.stream`). Likewise the LR scheduler is stepped here once per optimizer step
(a prepared scheduler steps once per process). Logging (TensorBoard, tqdm, ``losses.jsonl``),
validation and checkpoint writing happen on the main process; checkpoints are collective.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from denseface.model.dense_face import DenseFace, DenseFaceConfig
from denseface.model.tiny_sd import SDComponents, build_tiny_sd, load_sd, vae_fingerprint
from denseface.train import checkpoint as ckpt
from denseface.train.config import TrainConfig
from denseface.train.data import (
    DataState,
    SampleToTensors,
    check_shards_per_process,
    effective_workers,
    make_loader,
    make_pipeline,
    resolve_urls,
    start_workers,
)
from denseface.train.identity_index import IdentityIndex, identity_backend
from denseface.train.losses import TERMS, LossWeights, dense_face_loss, diffusion_target, sample_timesteps
from denseface.train.stream import seed_of
from denseface.train.targets import render_heatmaps

LOADER_HEATMAP_MAX = 32  # "auto": heatmaps rendered in the workers up to this head size, on the device above


def launched_world_size() -> int:
    """Processes the launcher started (torchrun / ``accelerate launch`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator that joins the launcher's process group, also on a machine without CUDA.

    Why: under ``accelerate launch --multi_gpu`` or torchrun on a CPU-only machine, a plain
    ``Accelerator()`` silently runs every process as its own single-process job (each reads
    all shards and trains alone); with ``cpu=True`` it joins them over gloo (MULTI_CPU)."""
    cpu = cfg.cpu or not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cpu), cpu=cpu)
    if acc.num_processes != launched_world_size():
        raise RuntimeError(f"launched {launched_world_size()} processes but accelerate runs {acc.num_processes}: "
                           "the processes would train independently")
    return acc


def resolve_mixed_precision(value: str, cpu: bool = False) -> str:
    if value != "auto":
        return value
    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class TrainResult:
    """Per-step losses of this run (steps start_step+1 .. step) and where things were written."""

    start_step: int
    step: int
    losses: dict[str, list[float]]
    output_dir: Path
    checkpoint: Path | None = None

    def window_means(self, n: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Mean of each term over the first and the last ``n`` steps (default: a tenth, 1..50)."""
        total = len(self.losses["total"])
        if total == 0:
            raise ValueError("no training step was run")
        n = n or max(1, min(50, total // 10))
        first = {k: sum(v[:n]) / n for k, v in self.losses.items()}
        last = {k: sum(v[-n:]) / n for k, v in self.losses.items()}
        return first, last

    def summary(self) -> str:
        first, last = self.window_means()
        n = max(1, min(50, len(self.losses["total"]) // 10))
        lines = [f"steps {self.start_step + 1}..{self.step}: mean over the first / last {n} step(s)"]
        lines += [f"  {k:<10} {first[k]:10.5f} -> {last[k]:10.5f}" for k in TERMS]
        if self.checkpoint is not None:
            lines.append(f"checkpoint: {self.checkpoint}")
        return "\n".join(lines)


@dataclass
class _Log:
    """Per-step loss terms, averaged over the processes: the loss of the global batch."""

    accelerator: Accelerator
    pending: list[torch.Tensor] = field(default_factory=list)  # stacked terms per step, on device
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TERMS})

    def flush(self) -> list[dict[str, float]]:
        """Collective (every rank calls it at the same steps): one all-reduce per interval."""
        if not self.pending:
            return []
        local = torch.stack(self.pending).float()
        rows = self.accelerator.reduce(local, reduction="mean").cpu().tolist()  # one device sync per interval
        self.pending.clear()
        out = [dict(zip(TERMS, r)) for r in rows]
        for r in out:
            for k in TERMS:
                self.history[k].append(r[k])
        return out


class Trainer:
    """Builds model, optimizer and data from a `TrainConfig`; `train_step` is one optimizer step."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator | None = None,
                 sd: SDComponents | None = None) -> None:
        self.cfg = cfg
        self.accelerator = acc = accelerator or make_accelerator(cfg)
        set_seed(cfg.seed)  # the new modules' initialisation is reproducible
        self.urls = resolve_urls(cfg.data, cfg.bad_shards)
        check_shards_per_process(len(self.urls), acc.num_processes)  # before any model is loaded
        self.val_urls = resolve_urls(cfg.val_data, cfg.bad_shards) if cfg.val_data else self.urls
        self.sd = sd if sd is not None else (load_sd(cfg.pretrained) if cfg.pretrained else build_tiny_sd(cfg.seed))
        vae_scale = 2 ** (len(self.sd.vae.config.block_out_channels) - 1)
        self.resolution = cfg.resolution or self.sd.unet.config.sample_size * vae_scale
        if self.resolution % vae_scale:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE's factor {vae_scale}")
        self.latent_size = self.resolution // vae_scale
        self.head_size = cfg.head_size or self.latent_size
        mode = cfg.heatmaps_on
        self.heatmaps_in_loader = mode == "loader" or (mode == "auto" and self.head_size <= LOADER_HEATMAP_MAX)

        with acc.local_main_process_first():  # one process per node builds the cached index
            self.index = IdentityIndex.load_or_build(self.urls, cfg.id_index)
        overrides = dict(cfg.model)
        if overrides.get("id_dim", self.index.dim) != self.index.dim:
            raise ValueError(f"model id_dim {overrides['id_dim']} != the data's identity embeddings ({self.index.dim})")
        overrides["id_dim"] = self.index.dim
        # Lineage: generation must embed its reference with the backend these embeddings came from.
        overrides["extra"] = {**overrides.get("extra", {}), "id_backend": identity_backend(self.urls)}
        if cfg.head_size is not None:
            overrides["head_out_size"] = cfg.head_size
        set_seed(cfg.seed)
        model = DenseFace.from_sd(self.sd, DenseFaceConfig.from_dict(overrides))
        # Training is all G2. Keeping the UNet's attention in G2 between calls too matters for
        # gradient checkpointing: its recomputation runs in backward, after forward() has
        # restored the standing mode, and must see the same PC-adapted attention.
        model.set_mode("G2")
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        for frozen in (self.sd.unet, self.sd.text_encoder):
            if self.weight_dtype == torch.float32:
                frozen.to(acc.device)
            else:
                frozen.to(acc.device, dtype=self.weight_dtype)
        self.sd.vae.to(acc.device)  # fp32: fp16 VAE encoders can overflow
        self.vae_id = vae_fingerprint(self.sd.vae) if cfg.use_latents else None  # which latent.npy to trust
        if cfg.gradient_checkpointing:
            self.sd.unet.enable_gradient_checkpointing()
            model.pose_branch.net.enable_gradient_checkpointing()
        self.params = model.trainable_parameters()
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        warmup = cfg.lr_warmup_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.noise_scheduler = self.sd.scheduler
        self.weights = LossWeights(cfg.lambda_landmarks, cfg.lambda_mask, cfg.lambda_depth)
        self.generator = torch.Generator(device=acc.device).manual_seed(
            seed_of(cfg.seed, "noise", acc.process_index) % 2**63)
        self.checkpoints = Path(cfg.output_dir) / "checkpoints"
        self.step = 0
        self.data_state: DataState | None = None
        if cfg.resume:
            self.load(ckpt.resolve_checkpoint(cfg.resume, self.checkpoints))
        self._val_batch: dict[str, Any] | None = None
        self._writer = None

    # ---- pieces -----------------------------------------------------------------------------
    @property
    def dense_face(self) -> DenseFace:
        return self.accelerator.unwrap_model(self.model)

    def transform(self, caption_dropout: float) -> SampleToTensors:
        return SampleToTensors(self.resolution, self.head_size, self.cfg.heatmap_sigma, caption_dropout,
                               self.cfg.seed, self.index, self.heatmaps_in_loader, self.vae_id)

    def train_loader(self) -> torch.utils.data.DataLoader:
        acc, cfg = self.accelerator, self.cfg
        workers = effective_workers(len(self.urls), acc.num_processes, cfg.num_workers)
        fresh = DataState(max(1, workers), acc.num_processes, acc.process_index)
        saved = self.data_state
        if saved is not None and saved.positions and (saved.num_workers, saved.world_size, saved.rank) != (
                fresh.num_workers, fresh.world_size, fresh.rank):
            warnings.warn(f"the checkpoint's data position is for {saved.num_workers} worker(s) x {saved.world_size} "
                          f"process(es), this run has {fresh.num_workers} x {fresh.world_size}: the data stream "
                          "restarts, so the run will not repeat the uninterrupted one", stacklevel=2)
            saved = None
        self.data_state = saved if saved is not None and saved.positions else fresh
        pipeline = make_pipeline(self.urls, self.transform(cfg.caption_dropout), cfg.batch_size, seed=cfg.seed,
                                 rank=acc.process_index, world_size=acc.num_processes, num_workers=workers,
                                 chunk_shards=cfg.chunk_shards, buffer_size=cfg.shuffle_buffer, state=self.data_state)
        return make_loader(pipeline, workers, pin_memory=acc.device.type == "cuda")

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.accelerator.device
        return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def latents(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """Scaled latents: cached ``latent`` where present, else the VAE's posterior sample."""
        vae = self.sd.vae
        sf = vae.config.scaling_factor
        has = batch["has_latent"]
        cached = batch["latent"].float() * sf if "latent" in batch else None
        if cached is not None and bool(has.all()):
            return cached
        z = vae.encode(batch["image"].to(vae.dtype)).latent_dist.sample(generator=generator).float() * sf
        return z if cached is None else torch.where(has[:, None, None, None], cached, z)

    def encode_text(self, captions: list[str], id_emb: torch.Tensor | None = None) -> torch.Tensor:
        """G2 condition of captions with identities (B, id_dim); a dropped caption ("") stays the
        plain empty prompt (classifier-free guidance's unconditional branch). Without id_emb: G1."""
        model = self.dense_face
        prompts = [model.prompt_for(c, identity=id_emb is not None and c != "") for c in captions]
        return model.encode_text(prompts, id_emb)

    def heatmaps(self, batch: dict[str, Any]) -> torch.Tensor:
        if "heatmaps" in batch:
            return batch["heatmaps"]
        return render_heatmaps(batch["landmarks"], self.head_size, self.cfg.heatmap_sigma)

    def forward_loss(self, model: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator,
                     timesteps: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Eq. 8 on one batch (already on the device): (terms, dense predictions)."""
        latents = self.latents(batch, generator)
        text = self.encode_text(batch["caption"], batch["id_emb"])
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = timesteps if timesteps is not None else sample_timesteps(
            latents.shape[0], self.noise_scheduler.config.num_train_timesteps, generator, latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        with self.accelerator.autocast():
            pred, dense = model(noisy, t, text, batch["pose_image"], mode="G2", id_emb=batch["id_emb"])
        target = diffusion_target(self.noise_scheduler, latents, noise, t)
        terms = dense_face_loss(pred, target, dense, self.heatmaps(batch), batch["mask"], batch["depth"], self.weights)
        return terms, dense

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step. Gradients are cleared at the start, so after the call ``.grad``
        shows what this step's backward reached."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms, _ = self.forward_loss(self.model, self.to_device(batch), self.generator)
        self.accelerator.backward(terms["total"])
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        return {k: v.detach() for k, v in terms.items()}

    # ---- validation and logging ---------------------------------------------------------------
    def val_batch(self) -> dict[str, Any]:
        if self._val_batch is None:
            pipe = make_pipeline(self.val_urls, self.transform(0.0), self.cfg.val_samples, seed=self.cfg.seed,
                                 shuffle=False, loop=False)
            self._val_batch = next(iter(pipe))
        return self._val_batch

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Losses at a fixed t (0.2 T) and fixed noise on fixed samples, and the picture of the
        dense predictions (main process only; the unwrapped model, so no collective runs)."""
        from denseface.train.visualize import dense_panel

        model = self.dense_face
        model.eval()
        try:
            batch = self.to_device(self.val_batch())
            gen = torch.Generator(device=self.accelerator.device).manual_seed(self.cfg.seed)
            n = len(batch["key"])
            t = torch.full((n,), int(0.2 * self.noise_scheduler.config.num_train_timesteps),
                           device=self.accelerator.device)
            terms, dense = self.forward_loss(model, batch, gen, timesteps=t)
        finally:
            model.train()
        values = {k: float(v) for k, v in terms.items()}
        writer = self.writer()
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"val/{k}", v, self.step)
            writer.add_image("val/dense", dense_panel(batch, dense, self.heatmaps(batch)), self.step, dataformats="HWC")
        return values

    def writer(self):
        if not self.cfg.tensorboard or not self.accelerator.is_main_process:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(self.cfg.output_dir) / "tensorboard"))
        return self._writer

    def _log(self, rows: list[dict[str, float]], first_step: int) -> None:
        if not rows or not self.accelerator.is_main_process:
            return
        out = Path(self.cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "losses.jsonl", "a") as fh:
            for i, r in enumerate(rows):
                fh.write(json.dumps({"step": first_step + i, **r}) + "\n")
        writer = self.writer()
        if writer is not None:
            for k in TERMS:
                writer.add_scalar(f"loss/{k}", sum(r[k] for r in rows) / len(rows), self.step)
            writer.add_scalar("lr", self.lr_scheduler.get_last_lr()[0], self.step)

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path:
        acc = self.accelerator
        trainer_state = {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
        if acc.scaler is not None:
            trainer_state["scaler"] = acc.scaler.state_dict()
        return ckpt.save_checkpoint(
            self.checkpoints, self.step, is_main=acc.is_main_process, rank=acc.process_index,
            barrier=acc.wait_for_everyone,
            save_weights=lambda d: self.dense_face.save_trained(d, metadata={"step": self.step}),
            trainer_state=trainer_state, rng=ckpt.rng_state(self.generator),
            data_state=self.data_state.to_dict() if self.data_state else {}, keep=self.cfg.keep_checkpoints)

    def load(self, path: Path) -> None:
        self.dense_face.load_trained(path)
        state = ckpt.load_pt(path / "trainer.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng, data = ckpt.load_rank_files(path, self.accelerator.process_index)
        if rng is not None:
            ckpt.set_rng_state(rng, self.generator)
        self.data_state = DataState.from_dict(data) if data else None

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        start = self.step
        log = _Log(acc)
        saved_at, last_ckpt = None, None
        bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        batches = start_workers(self.train_loader())
        try:
            while self.step < cfg.steps:
                batch = next(batches)
                terms = self.train_step(batch)
                self.data_state.update(batch)
                self.step += 1
                log.pending.append(torch.stack([terms[k] for k in TERMS]))
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rows = log.flush()
                    self._log(rows, self.step - len(rows) + 1)
                    if rows:
                        bar.set_postfix(loss=f"{sum(r['total'] for r in rows) / len(rows):.4f}")
                    if any(not math.isfinite(r["total"]) for r in rows):
                        raise FloatingPointError(f"non-finite loss at step {self.step}")
                if self.step % cfg.validate_every == 0 and acc.is_main_process:
                    self.validate()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    last_ckpt, saved_at = self.save(), self.step
        finally:
            bar.close()
            del batches
            if self._writer is not None:
                self._writer.flush()
        if saved_at != self.step and self.step > start:
            last_ckpt = self.save()
        self._log(log.flush(), self.step)
        return TrainResult(start, self.step, log.history, Path(cfg.output_dir), last_ckpt)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def train(cfg: TrainConfig, accelerator: Accelerator | None = None) -> TrainResult:
    """Train as configured (resuming if ``cfg.resume``) and return the per-step losses."""
    trainer = Trainer(cfg, accelerator)
    try:
        return trainer.train()
    finally:
        trainer.close()
