"""Trainer: streaming WebDataset pipeline, losses, loop, checkpoints.

Modules (import them directly; this package imports nothing, so ``denseface train --help``
stays light):

* `config`: `TrainConfig` (pydantic; YAML + flags), `load_train_config`;
* `stream`: `ShardStream`, the deterministic, resumable source of raw samples;
* `identity_index`: `IdentityIndex`, reference embeddings of another image of the same person;
* `targets`: heatmaps, mask/depth resizing, pose image;
* `data`: `SampleToTensors`, `collate`, `make_pipeline`, `make_loader`, `DataState`, `resolve_urls`;
* `losses`: Eq. 8 (`dense_face_loss`), `sample_timesteps`;
* `checkpoint`: trained-modules-only checkpoints with optimizer/RNG/data state;
* `visualize`: the validation picture; `loop`: `Trainer`, `train`, `TrainResult`;
* `synthetic`: a dataset with every member, for tests, benchmarks and demos.

``denseface train`` is wired in `denseface.cli` from `TrainConfig`'s fields.
"""
