"""Export a recognizer as an ONNX *gradient graph* for TIP-IM: (x, cotangents) -> (embedding, grad).

``grad[b, k] = d <embedding[b], cotangents[b, k]> / d x[b]``: one forward, K vector-Jacobian products.

Recipe (measured, see docs/design.md, "Gradient graphs"): ``make_fx`` traces ``fn(x, v)`` — forward once
with ``torch.func.vjp``, then ``torch.vmap`` of the VJP over the K cotangents — with the core aten
decompositions; ``torch.onnx.export(dynamo=True)`` then exports the traced GraphModule.

Batching the K VJPs is what makes the graph fast: autograd's ``is_grads_batched`` (legacy vmap) and
functorch's fallback both LOOP over K for ops without a batching rule (convolution backward,
grouped convolutions, relu/hardtanh/prelu backward), giving K tiny ops plus slicing per layer.
While tracing, ``_BatchableBackward`` routes conv2d through a Function whose backward is one
convolution over K*B (flipped-kernel conv at stride 1, transposed conv when strided) and the
activations through forms whose backward is a multiply by a mask (same values and gradients,
kink conventions included). Measured in ONNX Runtime on 2 CPU cores, K = 10: mobileface
30 -> 14 ms, faceres 480 -> 270 ms per call; exports 2-4x faster.
The exporter emits opset 18; for opset 17 (TensorRT 8.5/8.6) we move the Reduce* ``axes`` input
back to an attribute (``onnx.version_converter`` produces an invalid model here).

Shapes are fixed: B = 1 (``x`` [1,3,S,S], ``cotangents`` [1,K,D], ``feature_keep`` [1,F] when
exported with it), K = ``num_targets``.

Surrogate model augmentation (DFANet-style dropout on feature maps) needs the graph's network to
change from call to call without a re-export, and inference engines have no random numbers that a
seed could reproduce. So a graph exported with ``feature_keep=True`` multiplies every convolution's
output (before its bias) by a slice of a ``feature_keep`` input, which the runtime feeds with a fresh
dropout mask per step (or ones: the plain network). The multiplies cost about a tenth of faceres's
graph time, so only bundles whose recipe drops features get such graphs.

Example:
    >>> rec = Recognizer.load("mobileface")                                   # doctest: +SKIP
    >>> export_gradient_graph(rec, Path("mobileface.grad.onnx"), num_targets=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode

from edgecloak.errors import ModelError

from .recognizers import Recognizer

# graphs with the feature_keep input are their own kind in the export cache (``grad-keep``), so the
# plain graphs this version writes are gradgraph-2's, and caches of them stay current
EXPORTER_VERSION = "gradgraph-2 (make_fx + vmap(vjp), K-batched conv/activation backward, B=1 fixed)"
# the gradient graph's inputs, in order (the last only in graphs exported with feature_keep=True)
GRADIENT_INPUTS = ("x", "cotangents", "feature_keep")

aten = torch.ops.aten

# Reduce ops whose `axes` became an input in opset 18 (ReduceSum already had it as input in 13).
_REDUCE_AXES_MOVED_IN_18 = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare",
}

# ONNX operators the TensorRT ONNX parser supports (rows marked "Y" in onnx-tensorrt's
# docs/operators.md, https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md, read at
# commit 009d6541; that matrix is the TensorRT 8.4 one). Used for 8.5/8.6 as a conservative subset:
# later releases only added ops, so anything listed here imports on 8.5+ (restrictions such as
# "weights must be initializers" are not checked here beyond the op name).
_TRT_OPS_8X = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU
HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg
NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform
RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Unsqueeze Upsample Where Xor
""".split())
TENSORRT_ONNX_OPS: dict[str, frozenset[str]] = {"8.4": _TRT_OPS_8X, "8.5": _TRT_OPS_8X, "8.6": _TRT_OPS_8X}


def _convolution_backward_input(grad_output, input, weight, bias_sizes, stride, padding, dilation,
                                transposed, output_padding, groups, output_mask):
    """aten.convolution_backward, input gradient only: a flipped-kernel convolution (stride 1) or a
    transposed convolution (strided)."""
    if transposed:
        raise NotImplementedError("gradient of a transposed convolution")
    spatial = weight.dim() - 2
    out_pad = []
    for i in range(spatial):
        reach = ((grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                 + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        out_pad.append(input.shape[2 + i] - reach)
    grad_input = None
    if output_mask[0]:
        flipped_pad = [dilation[i] * (weight.shape[2 + i] - 1) - padding[i] for i in range(spatial)]
        if all(s == 1 for s in stride) and all(p >= 0 for p in flipped_pad) and not any(out_pad):
            # Stride 1: the input gradient is an ordinary convolution with the kernel flipped and
            # its in/out channels swapped (per group). Engines run Conv much faster than
            # ConvTranspose (ONNX Runtime CPU: faceres's K=10 gradient graph 1.5-2x faster).
            c_out, c_in_g = weight.shape[0], weight.shape[1]
            w = weight.reshape(groups, c_out // groups, c_in_g, *weight.shape[2:]).transpose(1, 2)
            w = w.reshape(groups * c_in_g, c_out // groups, *weight.shape[2:]).flip(list(range(2, 2 + spatial)))
            grad_input = aten.convolution(grad_output, w.contiguous(), None, [1] * spatial, flipped_pad, dilation,
                                          False, [0] * spatial, groups)
        else:
            grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True,
                                          out_pad, groups)
    return grad_input, None, None


def _avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override=None):
    """aten.avg_pool2d_backward as the input gradient of a depthwise convolution with a 1/area kernel."""
    if ceil_mode or (any(padding) and not count_include_pad):
        raise NotImplementedError("avg_pool2d backward with ceil_mode or count_include_pad=False")
    kh, kw = kernel_size
    channels = self.shape[1]
    weight = torch.full((channels, 1, kh, kw), 1.0 / (divisor_override or kh * kw), dtype=self.dtype)
    return _convolution_backward_input(grad_output, self, weight, None, list(stride or kernel_size), list(padding),
                                       [1, 1], False, [0, 0], channels, [True, False, False])[0]


def _decompositions() -> dict:
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_backward_input
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    return table


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _ConvInputGradient(torch.autograd.Function):
    """grad_output -> input gradient of a conv2d, with a batching rule of its own.

    Under vmap (the K cotangents), aten's convolution_backward, and grouped convolutions, fall
    back to a loop over K (K small convolutions plus slicing, per layer); this rule folds the K
    into the convolution's batch instead: one convolution per layer.
    """

    @staticmethod
    def forward(grad, weight, stride, padding, dilation, groups, input_shape):
        return _convolution_backward_input(grad, torch.empty(input_shape, device="meta"), weight, None, list(stride),
                                           list(padding), list(dilation), False, [0, 0], groups,
                                           [True, False, False])[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, grad, weight, stride, padding, dilation, groups, input_shape):
        if in_dims[1] is not None:
            raise NotImplementedError("batched conv weights")
        g = grad.movedim(in_dims[0], 0)
        k, n = g.shape[0], g.shape[1]
        shape = (k * n, *input_shape[1:])
        out = _ConvInputGradient.forward(g.reshape(k * n, *g.shape[2:]), weight, stride, padding, dilation, groups,
                                         shape)
        return out.reshape(k, n, *out.shape[1:]), 0


class _Conv2dInputGrad(torch.autograd.Function):
    """conv2d whose backward is ``_ConvInputGradient`` (input gradient only, batched over K)."""

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return torch.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(weight)
        ctx.spec = (stride, padding, dilation, groups, tuple(x.shape))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return _ConvInputGradient.apply(grad, weight, *ctx.spec), None, None, None, None, None, None


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, str) or input.dim() != 4:
        return torch.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _Conv2dInputGrad.apply(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)


def _masked(x: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` forward; gradient ``grad * mask``: a plain multiply, which batches (the fused
    threshold/hardtanh/clamp backward kernels do not, and vmap would loop over the K cotangents)."""
    m = mask.to(x.dtype).detach()
    return x * m + (value - x * m).detach()


def _bound(v, default):
    return default if v is None else float(v)


class _BatchableBackward(TorchFunctionMode):
    """Route the recognizers' conv and activation calls through forms whose backward batches
    over the K cotangents. Values are unchanged, and so are the gradients, including each op's
    convention at its kinks (relu/hardtanh: strict, clamp: inclusive, prelu: slope at 0).

    ``feature_keep`` ([1, F], optional): every convolution's output (before its bias), in call
    order, is multiplied by the next ``C*H*W`` values of it, reshaped to the output (surrogate
    model augmentation: the runtime feeds random dropout masks, or ones for the plain network;
    ``feature_map_sizes``).
    """

    def __init__(self, feature_keep: torch.Tensor | None = None):
        super().__init__()
        self.feature_keep = feature_keep
        self.used = 0  # values of feature_keep consumed so far

    def _keep(self, out: torch.Tensor) -> torch.Tensor:
        n = out[0].numel()
        if self.used + n > self.feature_keep.shape[1]:
            raise ModelError(f"feature_keep has {self.feature_keep.shape[1]} values; the network's feature maps need more")
        piece = self.feature_keep[:, self.used:self.used + n].reshape(1, *out.shape[1:])
        self.used += n
        return out * piece

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, F.conv2d):
            if self.feature_keep is None:
                return _conv2d(*args, **kwargs)
            # the mask multiplies the convolution's own output and the bias is added after it: a
            # batch norm folded into the bias (faceres, FaceNet) then behaves as in DFANet, where
            # dropout sits between a bias-free convolution and its batch norm (dropping a unit moves
            # it to the norm's shift, not to 0, which would push the next layers off their range)
            call = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args), **kwargs)
            bias = call.pop("bias", None)
            out = self._keep(_conv2d(**call))
            return out if bias is None else out + bias.reshape(1, -1, *([1] * (out.dim() - 2)))
        if func in (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            x = args[0]
            return _masked(x, torch.relu(x), x > 0)
        if func in (F.hardtanh, F.relu6):
            x = args[0]
            lo, hi = (0.0, 6.0) if func is F.relu6 else (
                float(args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)),
                float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)))
            return _masked(x, torch.clamp(x, lo, hi), (x > lo) & (x < hi))
        if func in (torch.clamp, torch.Tensor.clamp):
            x = args[0]
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
                value = torch.clamp(x, lo, hi)
                return _masked(x, value, (x >= _bound(lo, -math.inf)) & (x <= _bound(hi, math.inf)))
        if func is F.prelu:
            x, weight = args[0], args[1]
            slope = weight.reshape(1, -1, *([1] * (x.dim() - 2))) if weight.numel() > 1 else weight
            return x * torch.where(x > 0, torch.ones_like(x), slope * torch.ones_like(x)).detach()
        return func(*args, **kwargs)


def batchable_backward(feature_keep: torch.Tensor | None = None) -> _BatchableBackward:
    """Context manager: trace the recognizer with backward-batchable forms (see ``_BatchableBackward``)."""
    return _BatchableBackward(feature_keep)


class _FeatureMaps(TorchFunctionMode):
    """Records the shape of every convolution's output, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.conv2d, F.conv2d):
            self.shapes.append(tuple(out.shape[1:]))
        return out


def feature_map_sizes(rec: Recognizer) -> list[int]:
    """``C*H*W`` of every convolution output of one forward pass, in call order: the layout of a
    gradient graph's ``feature_keep`` input (its length is the sum).

    Example:
        >>> sum(feature_map_sizes(Recognizer.load("mobileface")))   # doctest: +SKIP
        354240
    """
    s = rec.input_size
    maps = _FeatureMaps()
    with torch.no_grad(), maps:
        rec.eval()(torch.zeros(1, 3, s, s))
    return [math.prod(shape) for shape in maps.shapes]


def _gradient_fn(rec: Recognizer, feature_keep: bool = False):
    def grad_of(x: torch.Tensor, cotangents: torch.Tensor, keep: torch.Tensor | None):
        mode = batchable_backward(keep)
        with mode:
            emb, vjp = torch.func.vjp(rec, x)
            # [K,B,D] cotangents: one VJP each over the single forward above, vmapped so that
            # every backward op runs once on a batch of K (functorch's vmap: batching rules,
            # where autograd's is_grads_batched falls back to a loop over K)
            (grad,) = torch.vmap(vjp)(cotangents.transpose(0, 1))
        if keep is not None and mode.used != keep.shape[1]:
            raise ModelError(f"feature_keep has {keep.shape[1]} values; the feature maps use {mode.used}")
        return emb.detach(), grad.transpose(0, 1)

    # make_fx traces every parameter of the function it is given: one signature per graph form
    def fn(x: torch.Tensor, cotangents: torch.Tensor):
        return grad_of(x, cotangents, None)

    def fn_keep(x: torch.Tensor, cotangents: torch.Tensor, feature_keep: torch.Tensor):
        return grad_of(x, cotangents, feature_keep)

    return fn_keep if feature_keep else fn


def gradient_inputs(rec: Recognizer, num_targets: int, feature_keep: bool = False) -> tuple[torch.Tensor, ...]:
    """Example inputs of the gradient graph: x [1,3,S,S], cotangents [1,K,D] and, with
    ``feature_keep``, feature_keep [1,F] (ones)."""
    s, d = rec.input_size, rec.spec.embedding_dim
    inputs = (torch.rand(1, 3, s, s) * 255, torch.randn(1, num_targets, d))
    return (*inputs, torch.ones(1, sum(feature_map_sizes(rec)))) if feature_keep else inputs


def trace_gradient_fn(rec: Recognizer, num_targets: int = 10, feature_keep: bool = False) -> torch.fx.GraphModule:
    """The (x, cotangents[, feature_keep]) -> (embedding, grad) function as a plain aten GraphModule (B = 1)."""
    rec = rec.eval()
    return make_fx(_gradient_fn(rec, feature_keep), decomposition_table=_decompositions(),
                   tracing_mode="real")(*gradient_inputs(rec, num_targets, feature_keep))


def _const_ints(model: onnx.ModelProto, name: str) -> list[int] | None:
    for init in model.graph.initializer:
        if init.name == name:
            return [int(a) for a in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(a) for a in numpy_helper.to_array(attr.t).reshape(-1)]
                if attr.name == "value_ints":
                    return list(attr.ints)
    return None


def _to_opset17(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset 18 -> 17: Reduce* axes from input back to attribute; refuse other 18-only forms."""
    if model.functions:
        raise ModelError("opset 17 down-conversion: model has local functions (not inlined)")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(f"opset 17 down-conversion: non-standard op {node.domain}::{node.op_type}")
        if node.op_type in _REDUCE_AXES_MOVED_IN_18 and len(node.input) > 1:
            if node.input[1]:
                axes = _const_ints(model, node.input[1])
                if axes is None:
                    raise ModelError(f"{node.name}: {node.op_type} axes are not constant")
                node.attribute.append(helper.make_attribute("axes", axes))
            del node.input[1:]
        if node.op_type in _REDUCE_AXES_MOVED_IN_18:
            noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            if noop and noop[0].i and not any(a.name == "axes" for a in node.attribute):
                raise ModelError(f"{node.name}: {node.op_type} with noop_with_empty_axes has no opset-17 form")
            for a in noop:
                node.attribute.remove(a)
        elif node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            raise ModelError(f"{node.name}: Split(num_outputs) has no opset-17 form here")
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise ModelError(f"{node.name}: Pad(axes) has no opset-17 form here")
        elif node.op_type in ("Resize", "ScatterElements", "ScatterND", "GroupNormalization",
                              "Col2Im", "CenterCropPad", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
                              "BitwiseNot", "OptionalHasElement", "OptionalGetElement", "Mish"):
            if node.op_type not in ("Resize", "ScatterElements", "ScatterND", "Mish"):
                raise ModelError(f"{node.name}: {node.op_type} changed in opset 18")
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 17
    # drop constants no longer used (the axes inputs)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    nodes = [n for n in model.graph.node if n.op_type != "Constant" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def export_gradient_graph(rec: Recognizer, out_path: Path, num_targets: int = 10, opset: int = 17,
                          feature_keep: bool = False) -> Path:
    """Write the (x [1,3,S,S] 0..255, cotangents [1,K,D]) -> (embedding [1,D], grad [1,K,3,S,S]) graph.
    With ``feature_keep``, a third input feature_keep [1,F] multiplies the convolutions' outputs
    (``feature_map_sizes``): ones give the plain network, random dropout masks an augmented surrogate.

    ``opset`` 17 is produced by down-converting the exporter's opset 18; 18+ is passed to the exporter.
    Weights are initializers in a single file; the model is checked with ``onnx.checker`` (full check).
    """
    if opset < 17:
        raise ValueError(f"opset {opset} unsupported (17 or newer)")
    out_path = Path(out_path)
    gm = trace_gradient_fn(rec, num_targets, feature_keep).eval()
    args = gradient_inputs(rec, num_targets, feature_keep)
    with quiet_exporter():
        program = torch.onnx.export(gm, args, dynamo=True, opset_version=max(opset, 18),
                                    input_names=list(GRADIENT_INPUTS[:len(args)]), output_names=["embedding", "grad"],
                                    optimize=True, verbose=False)
    return _finish(program, out_path, opset)


def export_embedding_graph(rec: Recognizer, out_path: Path, max_batch: int = 16, opset: int = 17) -> Path:
    """Write the forward-only graph x [B,3,S,S] (0..255) -> embedding [B,D], B dynamic in 1..max_batch.

    The TIP-IM loop scores its K candidate images with it (one call per step and surrogate).
    """
    if opset < 17:
        raise ValueError(f"opset {opset} unsupported (17 or newer)")
    out_path = Path(out_path)
    s = rec.input_size
    # torch.export needs a true range (min < max) and traces at batch 2: a K-1 bundle gets 1..2
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with quiet_exporter():
        program = torch.onnx.export(rec.eval(), (torch.zeros(2, 3, s, s),), dynamo=True,
                                    opset_version=max(opset, 18), input_names=["x"], output_names=["embedding"],
                                    dynamic_shapes=({0: batch},), optimize=True, verbose=False)
    return _finish(program, out_path, opset)


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise (torchvision op registration, deprecation chatter) for one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _finish(program, out_path: Path, opset: int) -> Path:
    """Save an exported program as one self-contained, checked ONNX file at the requested opset."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "graph.onnx"
        program.save(str(tmp_path), external_data=False)
        model = onnx.load(str(tmp_path))
    if opset == 17:
        model = _to_opset17(model)
    model.producer_name = "edgecloak"
    model.producer_version = EXPORTER_VERSION
    onnx.checker.check_model(model, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def opset_of(path: Path) -> int:
    """The default-domain opset a model imports."""
    model = onnx.load(str(path), load_external_data=False)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    raise ModelError(f"{path}: no default-domain opset import")


def check_tensorrt_ops(path: Path, trt_version: str = "8.5") -> list[str]:
    """Op types in the model (subgraphs included) that TensorRT ``trt_version``'s ONNX parser lacks."""
    supported = TENSORRT_ONNX_OPS.get(trt_version)
    if supported is None:
        raise ValueError(f"no TensorRT op list for {trt_version!r} (have {sorted(TENSORRT_ONNX_OPS)})")
    model = onnx.load(str(path), load_external_data=False)
    found: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            found.add(name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return sorted(op for op in found if op not in supported)
