"""Identity embedding of the aligned face (Dense-Face's c_id; DESIGN §3-5, ``id.npy``).

Two backends, chosen by ``stages.identity.backend``:

* ``dlib`` (the default): dlib's ResNet 128-d face descriptor
  (``dlib_face_recognition_resnet_model_v1.dat``) on the 150 px chip that dlib cuts with its
  own 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``). Both files ship
  in the ``face-recognition-models`` package, which is the default weights folder;
  ``weights`` may name another folder holding the two files. dlib's face detector is not
  run: the box given to the shape predictor is the bounding box of the crop's 478
  mediapipe landmarks (`landmark_box`). Options: ``engine`` (``torch``, default: dlib's
  weights run in torch, batched, on the GPU when the stage has ``num_gpus``; ``dlib``: dlib's
  own network), ``num_jitters`` (int, default 0; > 0 needs ``engine: dlib``) and ``padding``
  (float, default 0.25), as ``compute_face_descriptor`` takes them.
* ``arcface``: an insightface ArcFace ONNX model (e.g. buffalo_l's ``w600k_r50.onnx``) at
  the local path ``weights`` (required), run with onnxruntime: CUDA when the stage has
  ``num_gpus > 0`` and onnxruntime offers the CUDA provider, else CPU. The input is cut as
  insightface's ``face_align.norm_crop`` does: the least-squares similarity (Umeyama, as
  ``skimage.transform.SimilarityTransform.estimate``) of five points onto `ARCFACE_DST`,
  applied with ``cv2.warpAffine`` (bilinear, black border), then ``(rgb - 127.5) / 127.5``
  as NCHW RGB, as insightface's ``ArcFaceONNX`` feeds it. Options: ``input_mean`` and
  ``input_std`` (default 127.5 each; mxnet-converted models that normalise inside the graph
  want 0 and 1) and ``eyes`` (``"iris"``, default, or ``"corners"``, see `five_points`).

* ``irse50``: the ArcFace IR-SE50 network of the released Dense-Face code (512-d,
  `denseface.model.irse50`), in torch, from the local path ``weights``: ``model_ir_se50.pth``
  or the released Dense-Face checkpoint itself (its ``id_loss_func.facenet.*`` keys), loaded
  strictly with ``weights_only``. Input: the same 112 px five-point crop as ``arcface``, scaled
  to [-1, 1]; on the GPU when the stage has ``num_gpus > 0`` and CUDA is there. Option: ``eyes``.

The five points come from mediapipe's landmarks (`MP_FIVE_POINTS`), in insightface's order
(image left to right, as the detectors RetinaFace/SCRFD give them):

1. image-left eye centre (the subject's right eye): iris centre 468, or with
   ``eyes="corners"`` the mean of the eye corners 33 and 133;
2. image-right eye centre (the subject's left eye): iris centre 473, or corners 362, 263;
3. nose tip: 1;
4. image-left mouth corner: 61;
5. image-right mouth corner: 291.

The stored embedding (``item.arrays["id"]``) is float32 and L2-normalised (the shard writer
stores it as float16); ``id_backend`` and ``id_dim`` go to the manifest and the sample json.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from denseface.annotators.base import Item, Reject, Stage
from denseface.config import BuildConfig, StageConfig
from denseface.model_refs import Resolved, expand, require, resolve_file
from denseface.shards.schema import Status

# ---- pure functions ------------------------------------------------------------------

# insightface.utils.face_align.arcface_dst: where the five points land in the 112 px input.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
ARCFACE_SIZE = 112

# mediapipe landmark indices of the five points (module docstring); an eye given as a
# tuple is the mean of those landmarks.
MP_FIVE_POINTS: dict[str, tuple[Any, ...]] = {
    "iris": (468, 473, 1, 61, 291),
    "corners": ((33, 133), (362, 263), 1, 61, 291),
}

DLIB_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
DLIB_FILES = (DLIB_RECOGNITION, DLIB_SHAPE_5)

DLIB_ENGINES = ("torch", "dlib")
OPTIONS = {"dlib": {"num_jitters", "padding", "engine"}, "arcface": {"input_mean", "input_std", "eyes"},
           "irse50": {"eyes"}}


def landmark_pixels(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) float64 pixel coordinates (pixel centres at integers, as cv2 and dlib use) of
    mediapipe landmarks whose x, y are normalised to [0, 1] of the image edges."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[1] < 2:
        raise ValueError(f"landmarks must be (N, 2 or 3), got {lm.shape}")
    return lm[:, :2] * np.array([width, height], np.float64) - 0.5


def landmark_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) integer pixel box around all landmarks: the face box
    handed to dlib's shape predictor in place of its detector's."""
    pts = landmark_pixels(landmarks, width, height)
    if not np.isfinite(pts).all():
        raise ValueError("landmarks are not finite")
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def five_points(landmarks: np.ndarray, width: int, height: int, eyes: str = "iris") -> np.ndarray:
    """(5, 2) float32 pixel coordinates of insightface's five points from mediapipe's 478."""
    if eyes not in MP_FIVE_POINTS:
        raise ValueError(f"eyes must be one of {sorted(MP_FIVE_POINTS)}, got {eyes!r}")
    pts = landmark_pixels(landmarks, width, height)
    out = [pts[list(i)].mean(0) if isinstance(i, tuple) else pts[i] for i in MP_FIVE_POINTS[eyes]]
    return np.asarray(out, np.float32)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation; no reflection)
    taking ``src`` points onto ``dst`` (Umeyama 1991): the matrix that
    ``skimage.transform.SimilarityTransform().estimate(src, dst)`` finds."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1.0
    u, sv, vt = np.linalg.svd(cov)
    rot = u @ np.diag(sign) @ vt
    var = s.var(0).sum()
    if var <= 0:
        raise ValueError("source points are all the same point")
    scale = float((sv * sign).sum() / var)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def arcface_transform(points: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """2x3 matrix taking the image's five points onto `ARCFACE_DST` scaled to ``size``
    (insightface ``estimate_norm``, arcface mode, ``size`` a multiple of 112)."""
    if size % ARCFACE_SIZE:
        raise ValueError(f"arcface input size must be a multiple of {ARCFACE_SIZE}, got {size}")
    return umeyama_similarity(points, ARCFACE_DST.astype(np.float64) * (size / ARCFACE_SIZE))


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    p = np.asarray(points, np.float64)
    return p @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def align_arcface(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE,
                  eyes: str = "iris") -> tuple[np.ndarray, np.ndarray]:
    """(size x size RGB crop, 2x3 matrix) cut from ``image`` as insightface's ``norm_crop``."""
    h, w = image.shape[:2]
    matrix = arcface_transform(five_points(landmarks, w, h, eyes), size)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return crop, matrix


def arcface_blob(crops: Sequence[np.ndarray], mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """(N, 3, H, W) float32 network input of RGB uint8 crops: ``(rgb - mean) / std``."""
    arr = np.stack([np.asarray(c) for c in crops]).astype(np.float32)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"crops must be HxWx3, got batch shape {arr.shape}")
    return np.ascontiguousarray(((arr - mean) / std).transpose(0, 3, 1, 2))


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 rows scaled to unit L2 norm; a row that is zero or not finite raises."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    if not np.isfinite(x).all() or (norm <= 1e-12).any():
        raise ValueError("embedding is zero or not finite")
    return (x / norm).astype(np.float32)


def dlib_weights_dir(weights: str | None) -> Path | None:
    """Folder of the two dlib .dat files: ``weights`` if set, else face-recognition-models'
    ``models`` folder (found without importing the package, whose ``__init__`` needs
    pkg_resources), else None."""
    if weights:
        return Path(expand(weights))
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


# ---- models ----------------------------------------------------------------------------

class DlibDescriptor:
    """dlib's 5-point shape predictor + ResNet descriptor: (images, boxes) -> (N, 128).

    ``engine="torch"`` (default) cuts the 150 px chip with dlib (``get_face_chip``, as
    ``compute_face_descriptor`` does) and runs the same ResNet weights in torch
    (`denseface.model.dlib_resnet`), batched, on ``device``: the descriptors equal dlib's to
    float32 rounding and cost a fraction of dlib-bin's BLAS-less CPU time. ``engine="dlib"``
    runs dlib's own network (needed for ``num_jitters`` > 0, dlib's random jitter)."""

    dim = 128
    FORWARD_BATCH = 8  # images per torch forward (see __call__)

    def __init__(self, folder: Path, num_jitters: int = 0, padding: float = 0.25, engine: str = "torch",
                 device: str = "cpu", threads: int = 1) -> None:
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(folder / DLIB_SHAPE_5))
        self.num_jitters, self.padding, self.engine = int(num_jitters), float(padding), engine
        if engine == "torch":
            import torch

            from denseface.model.dlib_resnet import DlibFaceResNet

            if device == "cpu":  # the stage's CPUs, as onnxruntime gets them: more threads only spin
                torch.set_num_threads(threads)
            self.device = device
            self._torch_net = DlibFaceResNet.load(folder / DLIB_RECOGNITION).to(device)
        else:
            self._net = dlib.face_recognition_model_v1(str(folder / DLIB_RECOGNITION))

    def shape(self, image: np.ndarray, box: tuple[int, int, int, int]):
        return self._shape(image, self._dlib.rectangle(*box))

    def __call__(self, images: list[np.ndarray], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        images = [np.ascontiguousarray(im, dtype=np.uint8) for im in images]
        shapes = [self.shape(im, box) for im, box in zip(images, boxes)]
        if self.engine == "torch":
            import torch

            chips = np.stack([self._dlib.get_face_chip(im, sh, size=150, padding=self.padding)
                              for im, sh in zip(images, shapes)])
            # Every forward has the same shape: oneDNN picks other kernels for a batch of one or two
            # (1.8e-7 off, enough to flip a float16 id.npy byte), so how a runner happens to cut
            # batches would change the shards. Short chunks are padded with their last chip.
            n = len(chips)
            chips = np.concatenate([chips, np.repeat(chips[-1:], -n % self.FORWARD_BATCH, axis=0)])
            with torch.inference_mode():
                return np.concatenate([self._torch_net(torch.from_numpy(chunk).to(self.device)).double().cpu().numpy()
                                       for chunk in np.split(chips, len(chips) // self.FORWARD_BATCH)])[:n]
        dets = []
        for sh in shapes:
            dets.append(self._dlib.full_object_detections())
            dets[-1].append(sh)
        out = self._net.compute_face_descriptor(images, dets, self.num_jitters, self.padding)
        return np.array([np.array(per_image[0]) for per_image in out], np.float64)


class ArcFaceOnnx:
    """An insightface ArcFace ONNX model under onnxruntime: (N, H, W, 3) RGB crops -> (N, D)."""

    def __init__(self, path: Path, use_gpu: bool = False, threads: int = 0,
                 mean: float = 127.5, std: float = 127.5) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{path}: expected an NCHW input with 3 channels, got {inp.name} {shape}")
        self.input_name = inp.name
        self.size = int(shape[2]) if isinstance(shape[2], int) else ARCFACE_SIZE
        if isinstance(shape[3], int) and shape[3] != self.size:
            raise ValueError(f"{path}: expected a square input, got {shape}")
        # A model exported with a fixed batch size takes that many images a run.
        self.max_batch = int(shape[0]) if isinstance(shape[0], int) and shape[0] > 0 else None
        self.output_name = self.session.get_outputs()[0].name
        self.mean, self.std = float(mean), float(std)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        blob = arcface_blob(crops, self.mean, self.std)
        step = self.max_batch or len(blob)
        outs = []
        for start in range(0, len(blob), step):
            chunk = blob[start:start + step]
            pad = step - len(chunk)
            if pad:  # a fixed-batch model: fill the last run up
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            out = self.session.run([self.output_name], {self.input_name: chunk})[0]
            outs.append(np.asarray(out).reshape(len(chunk), -1)[:len(chunk) - pad])
        return np.concatenate(outs).astype(np.float64)


class IRSE50Torch:
    """The released code's IR-SE50 in torch: (N, 112, 112, 3) RGB crops -> (N, 512)."""

    size = ARCFACE_SIZE

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from denseface.model.irse50 import load_irse50

        self._torch = torch
        self.device = torch.device(device)
        self.net = load_irse50(path, self.device)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        blob = self._torch.from_numpy(arcface_blob(crops)).to(self.device)
        with self._torch.no_grad():
            return self.net(blob).cpu().double().numpy()


# ---- stage -------------------------------------------------------------------------------

class Identity(Stage):
    name = "identity"
    version = "2"  # 2: dlib descriptors from torch by default (equal to dlib's to float32 rounding)
    manifest_fields = {"id_backend": "string", "id_dim": "int32"}
    BACKENDS = ("dlib", "arcface", "irse50")

    def __init__(self, build: BuildConfig, conf: StageConfig | None = None) -> None:
        super().__init__(build, conf)
        self._model: DlibDescriptor | ArcFaceOnnx | IRSE50Torch | None = None

    def _option(self, key: str, default: Any) -> Any:
        return self.conf.options.get(key, default)

    def check(self) -> None:
        unknown = set(self.conf.options) - OPTIONS[self.backend]
        if unknown:
            raise ValueError(f"identity backend {self.backend}: unknown options {sorted(unknown)}; "
                             f"known: {sorted(OPTIONS[self.backend])}")
        if self.backend == "dlib":
            self._check_dlib()
        elif self.backend == "irse50":
            self._check_irse50()
        else:
            self._check_arcface()

    def weights(self) -> list[Resolved]:
        if self.backend == "arcface":
            how = ("Set stages.identity.weights to a local ArcFace .onnx path and put insightface's buffalo_l "
                   "w600k_r50.onnx (or another ArcFace ONNX model) there (insightface model zoo, "
                   "https://github.com/deepinsight/insightface)")
            return [resolve_file(self.conf.weights, "identity backend arcface needs weights (ArcFace ONNX model)",
                                 how, "stages.identity.weights", self.conf.sha256)]
        if self.backend == "irse50":
            how = ("Set stages.identity.weights to a local model_ir_se50.pth (the ArcFace IR-SE50 of "
                   "TreB1eN/InsightFace_Pytorch) or to the released Dense-Face checkpoint that holds it")
            return [resolve_file(self.conf.weights, "identity backend irse50 needs weights (IR-SE50 .pth)", how,
                                 "stages.identity.weights", self.conf.sha256)]
        folder = dlib_weights_dir(self.conf.weights)
        how = ("pip install face-recognition-models (the default folder), or download "
               "http://dlib.net/files/<name>.bz2, unpack, and set stages.identity.weights to their folder")
        setting = "stages.identity.weights (face-recognition-models is not installed)"
        return [resolve_file(folder / name if folder else None, f"identity: dlib {name}", how, setting)
                for name in DLIB_FILES]

    def _check_dlib(self) -> None:
        if importlib.util.find_spec("dlib") is None:
            raise ImportError("identity backend dlib needs the dlib module: pip install dlib-bin")
        require(self.weights())
        if int(self._option("num_jitters", 0)) < 0 or float(self._option("padding", 0.25)) < 0:
            raise ValueError("identity options num_jitters and padding must be >= 0")
        engine = self._option("engine", "torch")
        if engine not in DLIB_ENGINES:
            raise ValueError(f"identity option engine must be one of {list(DLIB_ENGINES)}, got {engine!r}")
        if engine == "torch" and int(self._option("num_jitters", 0)):
            raise ValueError("identity option num_jitters > 0 needs engine: dlib (dlib's own random jitter)")

    def _check_arcface(self) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ImportError("identity backend arcface needs onnxruntime: pip install onnxruntime")
        require(self.weights())
        eyes = self._option("eyes", "iris")
        if eyes not in MP_FIVE_POINTS:
            raise ValueError(f"identity option eyes must be one of {sorted(MP_FIVE_POINTS)}, got {eyes!r}")
        if float(self._option("input_std", 127.5)) == 0:
            raise ValueError("identity option input_std must not be 0")

    def _check_irse50(self) -> None:
        require(self.weights())
        if self._option("eyes", "iris") not in MP_FIVE_POINTS:
            raise ValueError(f"identity option eyes must be one of {sorted(MP_FIVE_POINTS)}, "
                             f"got {self._option('eyes', 'iris')!r}")

    def setup(self) -> None:
        if self.backend == "irse50":
            self._model = IRSE50Torch(Path(expand(self.conf.weights)), device=self.device())
        elif self.backend == "dlib":
            self._model = DlibDescriptor(dlib_weights_dir(self.conf.weights),
                                         num_jitters=int(self._option("num_jitters", 0)),
                                         padding=float(self._option("padding", 0.25)),
                                         engine=self._option("engine", "torch"), device=self.device(),
                                         threads=max(1, int(self.conf.num_cpus)))
        else:
            self._model = ArcFaceOnnx(Path(expand(self.conf.weights)), use_gpu=self.conf.num_gpus > 0,
                                      threads=max(1, int(self.conf.num_cpus)),
                                      mean=float(self._option("input_mean", 127.5)),
                                      std=float(self._option("input_std", 127.5)))

    def _prepare(self, item: Item) -> Any:
        """What the model needs of one item: (crop, face box) for dlib, the 112 crop for arcface."""
        if item.image is None or "lmk" not in item.arrays:
            raise ValueError("identity needs the aligned crop and its landmarks (run landmarks first)")
        image, lmk = item.image, item.arrays["lmk"]
        h, w = image.shape[:2]
        try:
            if self.backend == "dlib":
                return image, landmark_box(lmk, w, h)
            return align_arcface(image, lmk, self._model.size, self._option("eyes", "iris"))[0]
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise Reject(f"cannot align the face for the identity model: {exc}") from exc

    def process_batch(self, items: list[Item]) -> None:
        ready: list[Item] = []
        inputs: list[Any] = []
        for item in items:  # preparation per item, so one bad item fails alone
            try:
                inputs.append(self._prepare(item))
                ready.append(item)
            except Reject as exc:
                item.fail(Status.REJECTED, f"{self.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - as Stage._guarded
                item.fail(Status.ERROR, f"{self.name}: {type(exc).__name__}: {exc}")
        if not ready:
            return
        if self.backend == "dlib":
            raw = self._model([im for im, _ in inputs], [box for _, box in inputs])
        else:
            raw = self._model(inputs)
        for item, vec in zip(ready, raw):
            try:
                emb = l2_normalise(vec)
            except ValueError as exc:
                item.fail(Status.REJECTED, f"{self.name}: {exc}")
                continue
            item.arrays["id"] = emb
            item.fields["id_backend"] = self.backend
            item.fields["id_dim"] = int(emb.shape[0])
