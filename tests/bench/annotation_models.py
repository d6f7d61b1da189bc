"""Random-weight annotation models for ``make bench-gpu``: the captioners and CLIP of the
paper's caption stage, built from transformers configs, and ArcFace R50 as an ONNX graph.

Nothing is downloaded. The configs carry the published models' architecture values (the
``config.json`` of the hub ids named in `PUBLISHED`), written out by hand; their weights are
random, which does not change the cost of a forward pass or of a fixed-length generation.
`shrink` turns each into a tiny model of the same family for the CPU test.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

_BERT_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_VIT_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
              image_size=224, patch_size=14)
_QFORMER = dict(**_BERT_BASE, vocab_size=30523, cross_attention_frequency=2, max_position_embeddings=512)

# name -> (transformers model class, config class, config values, hub id whose config.json they copy)
PUBLISHED: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "blip-large": ("BlipForConditionalGeneration", "BlipConfig", dict(
        vision_config=dict(**_VIT_L, image_size=384, patch_size=16),
        text_config=dict(**_BERT_BASE, vocab_size=30524, encoder_hidden_size=1024, max_position_embeddings=512,
                         bos_token_id=30522, pad_token_id=0, sep_token_id=102, eos_token_id=102),
        projection_dim=512, image_text_hidden_size=256), "Salesforce/blip-image-captioning-large"),
    "blip-base": ("BlipForConditionalGeneration", "BlipConfig", dict(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16),
        text_config=dict(**_BERT_BASE, vocab_size=30524, encoder_hidden_size=768, max_position_embeddings=512,
                         bos_token_id=30522, pad_token_id=0, sep_token_id=102, eos_token_id=102),
        projection_dim=512, image_text_hidden_size=256), "Salesforce/blip-image-captioning-base"),
    "blip2-opt-2.7b": ("Blip2ForConditionalGeneration", "Blip2Config", dict(
        vision_config=_VIT_G, qformer_config=_QFORMER, num_query_tokens=32, image_token_index=50265,
        text_config=dict(model_type="opt", vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, word_embed_proj_dim=2560, max_position_embeddings=2048,
                         bos_token_id=2, eos_token_id=50118, pad_token_id=1)), "Salesforce/blip2-opt-2.7b"),
    "blip2-flan-t5-xl": ("Blip2ForConditionalGeneration", "Blip2Config", dict(
        vision_config=_VIT_G, qformer_config=_QFORMER, num_query_tokens=32, image_token_index=32100,
        text_config=dict(model_type="t5", vocab_size=32128, d_model=2048, d_ff=5120, d_kv=64, num_heads=32,
                         num_layers=24, num_decoder_layers=24, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                         # bos_token_id is not in the hub config: the "</s>" the processor puts after the image tokens
                         bos_token_id=1)),
        "Salesforce/blip2-flan-t5-xl"),
    "git-large-coco": ("GitForCausalLM", "GitConfig", dict(
        vision_config=dict(**_VIT_L, image_size=224, patch_size=14), hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=6, num_attention_heads=16, vocab_size=30522, max_position_embeddings=1024,
        bos_token_id=101, eos_token_id=102, pad_token_id=0), "microsoft/git-large-coco"),
    "vit-gpt2": ("VisionEncoderDecoderModel", "VisionEncoderDecoderConfig", dict(
        encoder=dict(model_type="vit", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, image_size=224, patch_size=16),
        decoder=dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                     add_cross_attention=True, is_decoder=True, bos_token_id=50256, eos_token_id=50256),
        decoder_start_token_id=50256, pad_token_id=50256, eos_token_id=50256),
        "nlpconnect/vit-gpt2-image-captioning"),
    "clip-vit-large-patch14": ("CLIPModel", "CLIPConfig", dict(
        vision_config=dict(**_VIT_L, image_size=224, patch_size=14),
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=1),
        projection_dim=768), "openai/clip-vit-large-patch14"),
}
CAPTIONERS = tuple(name for name in PUBLISHED if not name.startswith("clip"))
CLIP = "clip-vit-large-patch14"

_TINY = {"hidden_size": 32, "d_model": 32, "n_embd": 32, "word_embed_proj_dim": 32, "encoder_hidden_size": 32,
         "intermediate_size": 64, "ffn_dim": 64, "d_ff": 64, "d_kv": 16, "projection_dim": 16,
         "num_hidden_layers": 1, "num_layers": 1, "num_decoder_layers": 1, "n_layer": 1,
         "num_attention_heads": 2, "num_heads": 2, "n_head": 2}


def shrink(values: dict[str, Any]) -> dict[str, Any]:
    """The same family at toy size: widths 32, one layer, two heads, images of two patches a side
    (vocabularies and special tokens stay as published)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = shrink(value)
        elif key == "image_size":
            out[key] = 2 * values["patch_size"]
        else:
            out[key] = _TINY.get(key, value)
    return out


def published_values(name: str, full_size: bool) -> dict[str, Any]:
    """The config values of ``PUBLISHED[name]``, or of its `shrink`."""
    values = PUBLISHED[name][2]
    return values if full_size else shrink(values)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(name: str, full_size: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """``PUBLISHED[name]`` (or its `shrink`) with random weights, created on ``device`` in ``dtype``
    (a 4 B-parameter BLIP-2 never exists in float32 or on the host)."""
    import transformers as tf

    model_cls, config_cls, _, _ = PUBLISHED[name]
    values = published_values(name, full_size)
    if config_cls == "VisionEncoderDecoderConfig":
        encoder, decoder = (tf.AutoConfig.for_model(**values[part]) for part in ("encoder", "decoder"))
        config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            setattr(config, key, values[key])
    else:
        values = dict(values)
        if isinstance(values.get("text_config"), dict) and "model_type" in values["text_config"]:
            text = dict(values["text_config"])
            values["text_config"] = tf.AutoConfig.for_model(text.pop("model_type"), **text).to_dict()
        config = getattr(tf, config_cls)(**values)
    with torch.device(device), _default_dtype(dtype):
        model = getattr(tf, model_cls)(config)
    return model.eval()


def favour_words(model: torch.nn.Module, word_ids: list[int]) -> None:
    """Random decoders often emit EOS or specials first (an empty caption): bias the output layer
    towards ``word_ids`` (say, every id but the specials and EOS) so that every captioner says
    something, and a caption runs to its ``max_new_tokens``."""
    out = model.get_output_embeddings()
    if out is None:
        for sub in ("text_decoder", "decoder", "language_model"):
            if hasattr(model, sub):
                out = getattr(model, sub).get_output_embeddings()
                break
    words = torch.zeros(out.weight.shape[0], dtype=torch.bool, device=out.weight.device)
    words[word_ids] = True
    with torch.no_grad():
        if out.bias is not None:
            out.bias[~words] = -30.0
        else:  # logits of the others are then exactly 0, and some scaled-up word beats that
            out.weight[~words] = 0.0
            out.weight[words] *= 20.0


def image_size(model: torch.nn.Module) -> int:
    config = model.config
    vision = getattr(config, "vision_config", None) or config.encoder
    return int(vision.image_size)


def generate_fixed_length(model: torch.nn.Module, pixels: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy captions of exactly ``new_tokens`` tokens (random weights would stop at an early EOS
    by chance; a real caption stops at or before the stage's ``max_new_tokens``, so this is the
    upper bound of a caption's cost)."""
    kwargs: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1,
                                  do_sample=False)
    config = model.config
    if config.model_type in ("git", "vision-encoder-decoder"):  # as `Captioner` does; BLIP/BLIP-2 set their own
        kwargs["pad_token_id"] = config.pad_token_id
    with torch.inference_mode():
        return model.generate(pixel_values=pixels, **kwargs)


def clip_score_batch(model: torch.nn.Module, pixels: torch.Tensor, captions_per_image: int,
                     tokens: int) -> torch.Tensor:
    """What `ClipScorer.score` computes for a batch: image and caption embeddings, their cosines."""
    from denseface.model.captioners import pooled  # transformers 4.x and 5.x outputs alike

    n = len(pixels)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab - 2, (n * captions_per_image, tokens), device=pixels.device)
    with torch.inference_mode():
        img = pooled(model.get_image_features(pixel_values=pixels))
        txt = pooled(model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1).view(n, captions_per_image, -1)
        return torch.einsum("nd,nkd->nk", img, txt)


# ---- ArcFace R50 (insightface iresnet50, the architecture of buffalo_l's w600k_r50.onnx) ------------

IRESNET50_UNITS = (3, 4, 14, 3)
IRESNET50_WIDTHS = (64, 128, 256, 512)
TINY_IRESNET = dict(units=(1, 1, 1, 1), widths=(8, 16, 16, 32))  # `write_iresnet_onnx` arguments for CPU tests


def write_iresnet_onnx(path: Path, units: tuple[int, ...] = IRESNET50_UNITS,
                       widths: tuple[int, ...] = IRESNET50_WIDTHS, embedding: int = 512, size: int = 112,
                       seed: int = 0) -> Path:
    """An insightface IResNet (BN-conv-BN-PReLU-conv-BN blocks, BN-flatten-FC-BN head) as an ONNX
    graph with random weights and a dynamic batch: the graph onnxruntime runs for ArcFace R50,
    written with onnx.helper (torch's ONNX exporter needs onnxscript, which is not installed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = iter(range(10**6))

    def tensor(array: np.ndarray) -> str:
        name = f"w{next(count)}"
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = f"t{next(count)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(x: str, cin: int, cout: int, k: int, stride: int) -> str:
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        return op("Conv", [x, tensor(w)], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)

    def bn(x: str, c: int) -> str:
        return op("BatchNormalization", [x, tensor(1 + 0.1 * rng.standard_normal(c)),
                                         tensor(0.1 * rng.standard_normal(c)), tensor(0.1 * rng.standard_normal(c)),
                                         tensor(1 + rng.random(c))], epsilon=1e-5)

    def prelu(x: str, c: int) -> str:
        return op("PRelu", [x, tensor(np.full((c, 1, 1), 0.25))])

    x = prelu(bn(conv("input", 3, widths[0], 3, 1), widths[0]), widths[0])
    cin = widths[0]
    for n, cout in zip(units, widths):
        for i in range(n):
            stride = 2 if i == 0 else 1
            y = bn(conv(prelu(bn(conv(bn(x, cin), cin, cout, 3, 1), cout), cout), cout, cout, 3, stride), cout)
            shortcut = x if (cin == cout and stride == 1) else bn(conv(x, cin, cout, 1, stride), cout)
            x, cin = op("Add", [y, shortcut]), cout
    side = size // 2 ** len(units)
    flat = op("Flatten", [bn(x, cin)], axis=1)
    fc = rng.standard_normal((embedding, cin * side * side)) / np.sqrt(cin * side * side)
    bn(op("Gemm", [flat, tensor(fc), tensor(np.zeros(embedding))], transB=1), embedding)
    nodes[-1].output[0] = "embedding"  # the last node's output is the graph's
    graph = helper.make_graph(nodes, "iresnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["N", 3, size, size])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ---- CodeFormer (sczhou/CodeFormer's codeformer.pth) -----------------------------------------------

_RGB = [(c, c, 1.0) for c in range(3)]


def _route(conv: torch.nn.Conv2d, pairs: list[tuple[int, int, float]]) -> None:
    """``conv`` zeroed, then output channel o += v x input channel i at the kernel's centre, for each (o, i, v)."""
    centre = conv.kernel_size[0] // 2
    conv.weight.zero_()
    conv.bias.zero_()
    for o, i, v in pairs:
        conv.weight[o, i, centre, centre] = v


@torch.no_grad()
def pass_input_through(net: torch.nn.Module) -> None:
    """Reroute a random CodeFormer so that it returns its input face (at half resolution, each colour
    rescaled by the last GroupNorm) and not noise, in which no later stage finds a face: the residual
    and attention branches are zeroed, RGB rides in channels 0-2 through the encoder down to the
    highest fusion level, whose SFT shift hands it to a generator that is zero up to there
    (LeakyReLU(c) - LeakyReLU(-c) = 1.2 c). Every other weight stays random, and the cost of a
    forward pass does not depend on the values."""
    from denseface.model import codeformer as cf

    for m in net.modules():
        if isinstance(m, cf.ResBlock):
            _route(m.conv2, [])
            if hasattr(m, "conv_out"):
                _route(m.conv_out, _RGB)
        elif isinstance(m, cf.AttnBlock):
            _route(m.proj_out, [])
        elif isinstance(m, (cf.Downsample, cf.Upsample)):
            _route(m.conv, _RGB)
        elif isinstance(m, cf.Fuse_sft_block):
            _route(m.scale[2], [])
            _route(m.shift[2], [])
    _route(net.encoder.blocks[0], _RGB)
    _route(net.generator.blocks[0], [])
    _route(net.generator.blocks[-1], _RGB)
    net.generator.blocks[-2].weight.fill_(0.5)  # normalised colours, mostly inside the output's [-1, 1]
    top = net.fuse_convs_dict[max(net.connect_list, key=int)]
    _route(top.shift[0], _RGB + [(c + 3, c, -1.0) for c in range(3)])
    _route(top.shift[2], [(c, c, 1 / 1.2) for c in range(3)] + [(c, c + 3, -1 / 1.2) for c in range(3)])


def write_codeformer(path: Path, seed: int = 0, pass_through: bool = False, **arch: Any) -> torch.nn.Module:
    """A random CodeFormer (``arch``: constructor arguments, none = the published model; ``pass_through``:
    see `pass_input_through`) saved as codeformer.pth holds it, ``{"params_ema": state dict}``."""
    from denseface.model.codeformer import CodeFormer

    torch.manual_seed(seed)
    net = CodeFormer(**arch).eval()
    if pass_through:
        pass_input_through(net)
    torch.save({"params_ema": net.state_dict()}, path)
    return net
