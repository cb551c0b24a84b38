"""MTCNN (facenet-pytorch weights) -> three ONNX graphs that ``edgecloak.runtime.detect`` runs.

facenet-pytorch ships P/R/O-Net weights as plain state dicts (``pnet.pt``, ``rnet.pt``,
``onet.pt``). Its package cannot be installed beside our torch (its pins conflict), so the three
modules are rewritten here with the same layer names, shapes and forward passes, loaded from the
state dicts and exported with ONNX opset 17, weights stored as initializers inside each graph.

Graph interfaces (all float32, NCHW, input already normalised as ``(x - 127.5) / 128``; the image
is fed as H x W, i.e. NOT transposed like the original Caffe MTCNN -- facenet-pytorch's weights
expect that, and its R/O-Nets permute before the dense layers to match):

- ``pnet.onnx``: ``input`` (N, 3, H, W) -> ``reg`` (N, 4, h, w), ``prob`` (N, 2, h, w); H, W >= 12.
- ``rnet.onnx``: ``input`` (N, 3, 24, 24) -> ``reg`` (N, 4), ``prob`` (N, 2).
- ``onet.onnx``: ``input`` (N, 3, 48, 48) -> ``reg`` (N, 4), ``landmarks`` (N, 10), ``prob`` (N, 2).

``prob[:, 1]`` is the face probability; ``landmarks`` holds five x fractions then five y fractions
of the input box.

Example:
    >>> from pathlib import Path
    >>> from edgecloak.export.convert.mtcnn import convert
    >>> paths = convert(Path("pnet.pt"), Path("rnet.pt"), Path("onet.pt"), Path("mtcnn/"))  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['onet', 'pnet', 'rnet']
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgecloak.errors import ModelError
from edgecloak.runtime.atomic import staged_file

# Bump when the graphs this module writes change (names, opset, layout), so caches re-convert.
CONVERTER_VERSION = "mtcnn-onnx-1"
OPSET = 17


class PNet(nn.Module):
    """MTCNN proposal net (facenet-pytorch layout): fully convolutional, 12x12 receptive field."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """MTCNN refinement net (facenet-pytorch layout), 24x24 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights come from a Caffe model that saw transposed images: flatten in (W, H, C)
        # order so the dense layer sees features where it was trained to.
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN output net (facenet-pytorch layout), 48x48 input; adds five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # (W, H, C) order, as for RNet
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


# name -> (module class, example input shape, output names, dynamic axes of the input)
_NETS: dict[str, tuple[type[nn.Module], tuple[int, ...], tuple[str, ...], dict[int, str]]] = {
    "pnet": (PNet, (1, 3, 64, 80), ("reg", "prob"), {0: "batch", 2: "height", 3: "width"}),
    "rnet": (RNet, (2, 3, 24, 24), ("reg", "prob"), {0: "batch"}),
    "onet": (ONet, (2, 3, 48, 48), ("reg", "landmarks", "prob"), {0: "batch"}),
}


def load_net(name: str, state_dict_path: Path) -> nn.Module:
    """Build ``pnet``/``rnet``/``onet`` and load facenet-pytorch's state dict into it (eval mode).

    Example:
        >>> net = load_net("pnet", Path("pnet.pt"))  # doctest: +SKIP
        >>> reg, prob = net(torch.zeros(1, 3, 12, 12))  # doctest: +SKIP
    """
    if name not in _NETS:
        raise ModelError(f"unknown MTCNN net {name!r}; expected one of {', '.join(_NETS)}")
    try:
        state = torch.load(Path(state_dict_path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{state_dict_path}: cannot read the MTCNN {name} weights ({exc}); re-fetch facenet-pytorch") from exc
    net = _NETS[name][0]()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{state_dict_path}: not facenet-pytorch {name} weights ({str(exc).splitlines()[0]})") from exc
    return net.eval()


def export_net(net: nn.Module, name: str, out_path: Path) -> Path:
    """Export one loaded net to ONNX (opset 17, dynamic batch, PNet also dynamic H/W), atomically.

    The graph is checked with ``onnx.checker`` before it replaces ``out_path``.

    Example:
        >>> export_net(load_net("onet", Path("onet.pt")), "onet", Path("out/onet.onnx"))  # doctest: +SKIP
        PosixPath('out/onet.onnx')
    """
    _, shape, outputs, dyn = _NETS[name]
    dynamic_axes = {"input": dyn, **{o: {0: "batch"} for o in outputs}}
    if name == "pnet":
        dynamic_axes.update({o: {0: "batch", 2: "out_height", 3: "out_width"} for o in outputs})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out_path) as tmp, torch.no_grad():
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, but it exports these
            # small static graphs at opset 17 exactly; dynamo would emit opset 18.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net,
                (torch.zeros(shape),),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=list(outputs),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                external_data=False,
            )
        model = onnx.load(tmp)
        onnx.checker.check_model(model, full_check=True)
        model.producer_name = f"edgecloak {CONVERTER_VERSION}"
        onnx.save(model, tmp)
    return out_path


def convert(pnet_pt: Path, rnet_pt: Path, onet_pt: Path, out_dir: Path) -> dict[str, Path]:
    """Convert facenet-pytorch's three MTCNN state dicts into ``out_dir/{pnet,rnet,onet}.onnx``.

    Example:
        >>> convert(Path("pnet.pt"), Path("rnet.pt"), Path("onet.pt"), Path("out"))["pnet"]  # doctest: +SKIP
        PosixPath('out/pnet.onnx')
    """
    out_dir = Path(out_dir)
    sources = {"pnet": pnet_pt, "rnet": rnet_pt, "onet": onet_pt}
    return {name: export_net(load_net(name, Path(src)), name, out_dir / f"{name}.onnx") for name, src in sources.items()}
