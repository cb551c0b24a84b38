"""Convert a frozen TensorFlow GraphDef (``.pb``) into a torch module, without TensorFlow.

The GraphDef is parsed with protobuf and the compiled TensorFlow protos that the ``tensorboard``
package ships; constants are decoded from their ``TensorProto`` by :func:`tensor_to_numpy`. The
nodes on the path from the input placeholder to the requested output are compiled into an
:class:`OpProgram`: a flat list of :class:`Step` records (plain data) that a small interpreter
``nn.Module`` runs op by op. The program is also what :mod:`edgecloak.export.convert.keras_h5`
compiles Keras layer graphs into, so both converters share one executor.

Layout. TensorFlow graphs are NHWC; torch convolutions are NCHW. The module takes NCHW input and
keeps every rank-4 activation in NCHW, converting only where an op's meaning depends on the memory
order (a ``Reshape`` of a rank-4 tensor, an elementwise op with a rank-2 operand). Axis attributes
(``ConcatV2``, ``Sum``...) are remapped accordingly and per-channel constants are laid out for
NCHW at conversion time, so the common path has no transposes at all.

Example:
    >>> from pathlib import Path
    >>> import torch
    >>> from edgecloak.export.convert.graphdef import convert
    >>> net = convert(Path("graph_final.pb"))  # doctest: +SKIP
    >>> net(torch.zeros(2, 3, 160, 160)).shape  # doctest: +SKIP
    torch.Size([2, 512])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecloak.errors import ModelError

CONVERTER_VERSION = "graphdef-2"  # 2: reshape keeps a symbolic batch (dynamic-batch export)

NCHW = "NCHW"  # a rank-4 value stored channel-first (TensorFlow sees it as NHWC)
TF = "TF"  # a value stored exactly as TensorFlow lays it out

# TensorFlow NHWC axis -> index of the same axis in our NCHW storage, and back.
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# TensorProto decoding (what tf.make_ndarray does, for the dtypes frozen graphs use)
# --------------------------------------------------------------------------------------------

# DataType enum value -> (numpy dtype, TensorProto repeated field holding the values).
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype(np.float32), "float_val"),  # DT_FLOAT
    2: (np.dtype(np.float64), "double_val"),  # DT_DOUBLE
    3: (np.dtype(np.int32), "int_val"),  # DT_INT32
    4: (np.dtype(np.uint8), "int_val"),  # DT_UINT8
    5: (np.dtype(np.int16), "int_val"),  # DT_INT16
    6: (np.dtype(np.int8), "int_val"),  # DT_INT8
    9: (np.dtype(np.int64), "int64_val"),  # DT_INT64
    10: (np.dtype(np.bool_), "bool_val"),  # DT_BOOL
    19: (np.dtype(np.float16), "half_val"),  # DT_HALF
}


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """Decode a TensorFlow ``TensorProto`` into a numpy array (a copy, writable).

    Values come either packed little-endian in ``tensor_content`` or in the dtype's repeated field;
    in the latter case TensorFlow lets a short list stand for a full tensor by repeating its LAST
    value (``tf.fill``-style constants are stored as one value), which is reproduced here.

    Example:
        >>> from tensorboard.compat.proto import tensor_pb2
        >>> t = tensor_pb2.TensorProto(dtype=1, float_val=[0.5])
        >>> t.tensor_shape.dim.add().size = 3
        >>> tensor_to_numpy(t)
        array([0.5, 0.5, 0.5], dtype=float32)
    """
    if tensor.dtype not in _DTYPES:
        raise ModelError(f"TensorProto dtype {tensor.dtype} is not supported by the GraphDef converter")
    dtype, field_name = _DTYPES[tensor.dtype]
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = list(getattr(tensor, field_name))
    if field_name == "half_val":  # float16 bit patterns, one per int32
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.array(values, dtype=dtype)
    if flat.size == size:
        return flat.reshape(shape)
    if flat.size > size:
        raise ModelError(f"TensorProto holds {flat.size} values for shape {shape}")
    filled = np.full(size, flat[-1] if flat.size else 0, dtype=dtype)
    filled[: flat.size] = flat
    return filled.reshape(shape)


# --------------------------------------------------------------------------------------------
# The program: plain-data steps and the interpreter module
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One op of an :class:`OpProgram`: ``out = op(*inputs, **attrs)``.

    ``inputs`` name earlier values or constant buffers; ``attrs`` hold only plain Python data
    (ints, floats, strings, tuples), so the program pickles and traces without closures.
    """

    out: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(x: Tensor, padding: Any, kernel: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for an NCHW tensor under "SAME", "VALID" or explicit padding."""
    if padding == "VALID":
        return 0, 0, 0, 0
    if padding == "SAME":
        top, bottom = _same_pads(int(x.shape[2]), kernel[0], stride[0], dilation[0])
        left, right = _same_pads(int(x.shape[3]), kernel[1], stride[1], dilation[1])
        return top, bottom, left, right
    return tuple(padding)  # explicit (top, bottom, left, right)


def _op_conv2d(x: Tensor, w: Tensor, *bias: Tensor, stride: tuple[int, int], dilation: tuple[int, int],
               padding: Any, groups: int = 1) -> Tensor:
    top, bottom, left, right = _spatial_pads(x, padding, w.shape[2:], stride, dilation)
    if top == bottom and left == right:
        pad: tuple[int, int] = (top, left)
    else:  # TF puts the odd pixel after; torch's conv padding is symmetric, so pad explicitly.
        x = F.pad(x, (left, right, top, bottom))
        pad = (0, 0)
    return F.conv2d(x, w, bias[0] if bias else None, stride, pad, dilation, groups)


def _op_pool(x: Tensor, *, kind: str, kernel: tuple[int, int], stride: tuple[int, int], padding: Any) -> Tensor:
    top, bottom, left, right = _spatial_pads(x, padding, kernel, stride, (1, 1))
    if kind == "max":
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, kernel, stride)
    if not (top or bottom or left or right):
        return F.avg_pool2d(x, kernel, stride)
    # TF averages "SAME" windows over the real pixels only: divide by the per-window pixel count.
    summed = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), kernel, stride)
    ones = torch.ones_like(x[:1, :1])
    count = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), kernel, stride)
    return summed / count


def _op_channel(x: Tensor, *params: Tensor, fn: str, axis: int) -> Tensor:
    """Per-channel bias (``fn="bias"``) or scale+shift (``fn="affine"``) along ``axis``."""
    view = [1] * x.dim()
    view[axis] = -1
    if fn == "bias":
        return x + params[0].reshape(view)
    return x * params[0].reshape(view) + params[1].reshape(view)


def _op_reshape(x: Tensor, *, shape: tuple[int, ...], batch_leading: bool) -> Tensor:
    target = list(shape)
    if batch_leading:
        # The freezer constant-folded the batch size of the placeholder into this shape; every
        # tensor on the path is batch-leading, so the leading entry is the batch: keep ours
        # (symbolic, not int(): exported graphs must keep a dynamic batch).
        return x.reshape(x.shape[0], *target[1:])
    return x.reshape(target)


def _op_linear(x: Tensor, w: Tensor, *bias: Tensor) -> Tensor:
    return F.linear(x, w, bias[0] if bias else None)


def _op_reduce(x: Tensor, *, fn: str, axes: tuple[int, ...], keepdim: bool) -> Tensor:
    if fn == "sum":
        return x.sum(dim=axes, keepdim=keepdim)
    if fn == "mean":
        return x.mean(dim=axes, keepdim=keepdim)
    return x.amax(dim=axes, keepdim=keepdim)


_OPS: dict[str, Callable[..., Tensor]] = {
    "identity": lambda x: x,
    "conv2d": _op_conv2d,
    "pool": _op_pool,
    "channel": _op_channel,
    "relu": F.relu,
    "relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "square": lambda x: x * x,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "neg": torch.neg,
    "exp": torch.exp,
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "scale": lambda x, *, factor: x * factor,
    "concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "permute": lambda x, *, perm: x.permute(perm),
    "reshape": _op_reshape,
    "squeeze": lambda x, *, axes: x.squeeze(axes),
    "linear": _op_linear,
    "matmul": torch.matmul,
    "reduce": _op_reduce,
}


class OpProgram(nn.Module):
    """Runs a list of :class:`Step` records over named values; weights are float32 buffers.

    ``forward(x)`` takes the NCHW input and returns the output value in TensorFlow's layout (an
    embedding is rank 2, so no layout question arises there). The graph is plain data, so the
    module pickles with ``torch.save(module)`` and traces with ``make_fx`` (control flow depends
    on shapes only, never on tensor values).

    Example:
        >>> import numpy as np, torch
        >>> prog = OpProgram("x", "y", [Step("y", "scale", ("x",), {"factor": 2.0})], {}, {"x": NCHW, "y": NCHW})
        >>> prog(torch.ones(1, 1, 1, 1)).item()
        2.0
    """

    def __init__(self, input_name: str, output_name: str, steps: Sequence[Step],
                 consts: dict[str, np.ndarray], layouts: dict[str, str]):
        super().__init__()
        self.input_name = input_name
        self.output_name = output_name
        self.steps: list[Step] = list(steps)
        self.layouts: dict[str, str] = dict(layouts)
        for name, value in consts.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    def _run(self, x: Tensor, keep: set[str] | None) -> dict[str, Tensor]:
        env: dict[str, Tensor] = dict(self.named_buffers())
        env[self.input_name] = x
        kept: dict[str, Tensor] = {self.input_name: x} if keep and self.input_name in keep else {}
        for step in self.steps:
            env[step.out] = _OPS[step.op](*(env[i] for i in step.inputs), **step.attrs)
            if keep is not None and step.out in keep:
                kept[step.out] = env[step.out]
        kept[self.output_name] = env[self.output_name]
        return kept

    def forward(self, x: Tensor) -> Tensor:
        """The output value for NCHW input ``x`` (the raw embedding for the face models)."""
        return self._run(x, None)[self.output_name]

    def intermediates(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """Named intermediate values, each in TensorFlow's layout (rank-4 values as NHWC).

        Values that a fusion pass merged into a later op (a conv whose bias or batch-norm was
        folded in) no longer exist; asking for one raises ``KeyError``.
        """
        missing = [n for n in names if n not in self.layouts]
        if missing:
            raise KeyError(f"not values of this program (maybe fused away): {missing}")
        got = self._run(x, set(names))
        return {n: got[n].permute(_TO_NHWC) if self.layouts[n] == NCHW else got[n] for n in names}


class ProgramBuilder:
    """Collects steps, constants, value ranks and layouts; shared by the GraphDef and Keras compilers.

    The builder tracks for each value its rank and whether it is stored NCHW, and inserts the
    (cached) transposes an op needs. :meth:`build` folds per-channel bias / scale+shift steps into
    the convolution before them, which is exact up to float rounding and halves the op count.
    """

    def __init__(self, input_name: str):
        self.input_name = input_name
        self.steps: list[Step] = []
        self.consts: dict[str, np.ndarray] = {}
        self.rank: dict[str, int] = {input_name: 4}
        self.layout: dict[str, str] = {input_name: NCHW}
        self._const_keys: dict[Any, str] = {}
        self._converted: dict[tuple[str, str], str] = {}

    # -- constants and values -----------------------------------------------------------------
    def const(self, value: np.ndarray, key: Any = None) -> str:
        """Register a float32 constant buffer (deduplicated by ``key`` when given); returns its name."""
        if key is not None and key in self._const_keys:
            return self._const_keys[key]
        name = f"k{len(self.consts)}"
        self.consts[name] = np.ascontiguousarray(value, dtype=np.float32)
        if key is not None:
            self._const_keys[key] = name
        return name

    def emit(self, out: str, op: str, inputs: Sequence[str], rank: int, layout: str = TF, **attrs: Any) -> str:
        """Append ``out = op(*inputs, **attrs)``; ``rank``/``layout`` describe ``out``."""
        if op not in _OPS:
            raise ModelError(f"internal: no executor for op {op!r}")
        if out in self.rank or out in self.consts:
            raise ModelError(f"value {out!r} defined twice")
        self.steps.append(Step(out, op, tuple(inputs), dict(attrs)))
        self.rank[out] = rank
        self.layout[out] = layout
        return out

    def as_layout(self, name: str, layout: str) -> str:
        """``name`` stored in ``layout`` (NCHW only for rank 4), adding one cached transpose if needed."""
        if self.layout[name] == layout:
            return name
        if self.rank[name] != 4:
            raise ModelError(f"{name!r} has rank {self.rank[name]}; only rank-4 values change layout")
        key = (name, layout)
        if key not in self._converted:
            perm = _TO_NCHW if layout == NCHW else _TO_NHWC
            self._converted[key] = self.emit(f"{name}#{layout}", "permute", [name], 4, layout, perm=perm)
        return self._converted[key]

    @staticmethod
    def nchw_const(value: np.ndarray) -> np.ndarray:
        """A TF-layout constant laid out to broadcast against an NCHW value (trailing-aligned)."""
        if value.ndim == 0:
            return value
        if value.ndim > 4:
            raise ModelError(f"constant of rank {value.ndim} cannot broadcast against a rank-4 value")
        return value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(_TO_NCHW)

    # -- finishing ----------------------------------------------------------------------------
    def build(self, output: str, fuse: bool = True) -> OpProgram:
        """The program computing ``output`` (converted to TF layout), with conv folding if ``fuse``."""
        final = self.as_layout(output, TF) if self.rank[output] == 4 else output
        steps = self._fold_into_conv(final) if fuse else self.steps
        layouts = {s.out: self.layout[s.out] for s in steps}
        layouts[self.input_name] = NCHW
        used = {i for s in steps for i in s.inputs}
        consts = {k: v for k, v in self.consts.items() if k in used}
        return OpProgram(self.input_name, final, steps, consts, layouts)

    def _fold_into_conv(self, output: str) -> list[Step]:
        consumers: dict[str, int] = {}
        for s in self.steps:
            for i in s.inputs:
                consumers[i] = consumers.get(i, 0) + 1
        producer = {s.out: k for k, s in enumerate(self.steps)}
        steps: list[Step | None] = list(self.steps)
        for k, s in enumerate(self.steps):
            if s.op != "channel" or s.attrs["axis"] != 1 or s.inputs[0] not in producer:
                continue
            j = producer[s.inputs[0]]
            conv = steps[j]
            if conv is None or conv.op != "conv2d" or consumers.get(conv.out, 0) != 1 or conv.out == output:
                continue
            w = self.consts[conv.inputs[1]].astype(np.float64)
            b = self.consts[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 else np.zeros(w.shape[0])
            if s.attrs["fn"] == "bias":
                b = b + self.consts[s.inputs[1]]
            else:  # (conv(x) + b) * a + c  ==  conv_{w*a}(x) + (b*a + c)
                a = self.consts[s.inputs[1]].astype(np.float64).reshape(-1)
                w = w * a[:, None, None, None]
                b = b * a + self.consts[s.inputs[2]].reshape(-1)
            w_name, b_name = self.const(w), self.const(b)
            steps[j] = None
            steps[k] = Step(s.out, "conv2d", (conv.inputs[0], w_name, b_name), conv.attrs)
        return [s for s in steps if s is not None]


# --------------------------------------------------------------------------------------------
# GraphDef -> program
# --------------------------------------------------------------------------------------------


def _node_ref(ref: str) -> str:
    """Node name of an input reference (``name``, ``name:0``); other outputs are unsupported."""
    name, _, port = ref.partition(":")
    if port not in ("", "0"):
        raise ModelError(f"input {ref!r}: only the first output of a node is supported")
    return name


def _ints(attr: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in attr.list.i)


def _str(attr: Any) -> str:
    return attr.s.decode()


def default_output(nodes: dict[str, Any]) -> str:
    """The graph's single sink, or the tensor it L2-normalises if the sink is ``tf.nn.l2_normalize``.

    ``l2_normalize`` freezes to ``Mul(x, Rsqrt(Maximum(Sum(Square(x)), eps)))``; the raw
    embedding ``x`` is what the recognizer wrapper wants (it normalises, or attacks, itself).
    """
    consumed = {_node_ref(i) for n in nodes.values() for i in n.input if not i.startswith("^")}
    sinks = [name for name, n in nodes.items() if name not in consumed and n.op not in ("Const", "NoOp")]
    if len(sinks) != 1:
        raise ModelError(f"GraphDef has {len(sinks)} output candidates {sinks[:5]}; name the output")
    sink = nodes[sinks[0]]
    if sink.op == "Mul" and len(sink.input) == 2:
        a, b = (_node_ref(i) for i in sink.input)
        for x, r in ((a, b), (b, a)):
            chain = [r]
            while nodes[chain[-1]].op in ("Rsqrt", "Maximum", "Sum", "Square") and len(chain) < 5:
                chain.append(_node_ref(nodes[chain[-1]].input[0]))
            if [nodes[c].op for c in chain[:-1]] == ["Rsqrt", "Maximum", "Sum", "Square"] and chain[-1] == x:
                return x
    return sink.name


class _GraphCompiler:
    """Compiles the nodes a GraphDef output depends on into :class:`ProgramBuilder` steps."""

    def __init__(self, nodes: dict[str, Any], input_name: str):
        self.nodes = nodes
        self.input_name = input_name
        self.b = ProgramBuilder(input_name)
        self.alias: dict[str, str] = {}
        shape = nodes[input_name].attr["shape"].shape
        dims = [int(d.size) for d in shape.dim]
        if len(dims) != 4:
            raise ModelError(f"input {input_name!r} has shape {dims}; an NHWC image batch was expected")
        # A static batch size frozen into the graph leaks into constant-folded Reshape shapes.
        self.static_batch = dims[0] if dims[0] > 0 else None

    # -- helpers ------------------------------------------------------------------------------
    def value(self, ref: str) -> str:
        name = _node_ref(ref)
        return self.alias.get(name, name)

    def is_const(self, ref: str) -> bool:
        return self.nodes[_node_ref(ref)].op == "Const"

    def const_array(self, ref: str) -> np.ndarray:
        node = self.nodes[_node_ref(ref)]
        if node.op != "Const":
            raise ModelError(f"{node.name}: a constant was expected, found {node.op}")
        return tensor_to_numpy(node.attr["value"].tensor)

    def data_inputs(self, node: Any) -> list[str]:
        return [i for i in node.input if not i.startswith("^")]

    def order(self, output: str) -> list[str]:
        """Non-constant nodes ``output`` depends on, inputs first (iterative DFS: graphs are deep)."""
        seen: set[str] = set()
        ordered: list[str] = []
        stack: list[tuple[str, bool]] = [(output, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                ordered.append(name)
                continue
            if name in seen:
                continue
            seen.add(name)
            if name not in self.nodes:
                raise ModelError(f"node {name!r} is referenced but not in the graph")
            node = self.nodes[name]
            if node.op == "Const" or name == self.input_name:
                continue
            stack.append((name, True))
            for ref in reversed(self.data_inputs(node)):
                stack.append((_node_ref(ref), False))
        return ordered

    # -- compilation --------------------------------------------------------------------------
    def compile(self, output: str) -> OpProgram:
        if output == self.input_name:
            raise ModelError("the output is the input")
        for name in self.order(output):
            node = self.nodes[name]
            if node.op == "Placeholder":
                raise ModelError(f"{name}: a second placeholder is needed; only {self.input_name!r} is fed")
            handler = getattr(self, f"_{node.op}", None)
            if handler is None:
                raise ModelError(f"{name}: TensorFlow op {node.op} is not supported by the GraphDef converter")
            handler(node)
        return self.b.build(self.value(output))

    def _Identity(self, node: Any) -> None:
        self.alias[node.name] = self.value(node.input[0])

    _StopGradient = _Snapshot = _Identity

    def _Conv2D(self, node: Any, depthwise: bool = False) -> None:
        if _str(node.attr["data_format"]) not in ("NHWC", ""):
            raise ModelError(f"{node.name}: only NHWC convolutions are supported")
        x, f = self.data_inputs(node)
        w = self.const_array(f)  # HWIO (depthwise: H, W, C, multiplier)
        if depthwise:
            h, k, c, m = w.shape
            weight = w.reshape(h, k, c * m).transpose(2, 0, 1)[:, None]  # (C*M, 1, H, W), channel-major
            groups = c
        else:
            weight = w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            groups = 1
        s, d = _ints(node.attr["strides"]), _ints(node.attr["dilations"]) or (1, 1, 1, 1)
        padding: Any = _str(node.attr["padding"])
        if padding == "EXPLICIT":
            p = _ints(node.attr["explicit_paddings"])
            padding = (p[2], p[3], p[4], p[5])
        elif padding not in ("SAME", "VALID"):
            raise ModelError(f"{node.name}: padding {padding!r} is not supported")
        w_name = self.b.const(weight, key=(f, "conv", depthwise))
        self.b.emit(node.name, "conv2d", [self.b.as_layout(self.value(x), NCHW), w_name], 4, NCHW,
                    stride=(s[1], s[2]), dilation=(d[1], d[2]), padding=padding, groups=groups)

    def _DepthwiseConv2dNative(self, node: Any) -> None:
        self._Conv2D(node, depthwise=True)

    def _pool(self, node: Any, kind: str) -> None:
        if _str(node.attr["data_format"]) not in ("NHWC", ""):
            raise ModelError(f"{node.name}: only NHWC pooling is supported")
        k, s = _ints(node.attr["ksize"]), _ints(node.attr["strides"])
        if k[0] != 1 or k[3] != 1 or s[0] != 1 or s[3] != 1:
            raise ModelError(f"{node.name}: pooling over batch or channels is not supported")
        x = self.b.as_layout(self.value(node.input[0]), NCHW)
        self.b.emit(node.name, "pool", [x], 4, NCHW, kind=kind, kernel=(k[1], k[2]), stride=(s[1], s[2]),
                    padding=_str(node.attr["padding"]))

    def _MaxPool(self, node: Any) -> None:
        self._pool(node, "max")

    def _AvgPool(self, node: Any) -> None:
        self._pool(node, "avg")

    def _channel_axis(self, value: str, data_format: str) -> int:
        if self.b.layout[value] == NCHW:
            return 1
        return 1 if data_format == "NCHW" else self.b.rank[value] - 1

    def _BiasAdd(self, node: Any) -> None:
        x, bias = self.data_inputs(node)
        xv = self.value(x)
        axis = self._channel_axis(xv, _str(node.attr["data_format"]) if "data_format" in node.attr else "NHWC")
        self.b.emit(node.name, "channel", [xv, self.b.const(self.const_array(bias))], self.b.rank[xv],
                    self.b.layout[xv], fn="bias", axis=axis)

    def _FusedBatchNorm(self, node: Any) -> None:
        if node.attr["is_training"].b:
            raise ModelError(f"{node.name}: a training-mode batch norm cannot be frozen")
        x, scale, offset, mean, var = self.data_inputs(node)[:5]
        eps = node.attr["epsilon"].f
        a = self.const_array(scale).astype(np.float64) / np.sqrt(self.const_array(var).astype(np.float64) + eps)
        c = self.const_array(offset) - self.const_array(mean) * a
        xv = self.value(x)
        fmt = _str(node.attr["data_format"]) if "data_format" in node.attr else "NHWC"
        self.b.emit(node.name, "channel", [xv, self.b.const(a), self.b.const(c)], self.b.rank[xv],
                    self.b.layout[xv], fn="affine", axis=self._channel_axis(xv, fmt))

    _FusedBatchNormV2 = _FusedBatchNormV3 = _FusedBatchNorm

    def _unary(self, node: Any, op: str) -> None:
        xv = self.value(node.input[0])
        self.b.emit(node.name, op, [xv], self.b.rank[xv], self.b.layout[xv])

    def _Relu(self, node: Any) -> None:
        self._unary(node, "relu")

    def _Relu6(self, node: Any) -> None:
        self._unary(node, "relu6")

    def _Sigmoid(self, node: Any) -> None:
        self._unary(node, "sigmoid")

    def _Tanh(self, node: Any) -> None:
        self._unary(node, "tanh")

    def _Square(self, node: Any) -> None:
        self._unary(node, "square")

    def _Sqrt(self, node: Any) -> None:
        self._unary(node, "sqrt")

    def _Rsqrt(self, node: Any) -> None:
        self._unary(node, "rsqrt")

    def _Neg(self, node: Any) -> None:
        self._unary(node, "neg")

    def _Exp(self, node: Any) -> None:
        self._unary(node, "exp")

    def _binary(self, node: Any, op: str) -> None:
        refs = self.data_inputs(node)
        values = [self.value(r) for r in refs if not self.is_const(r)]
        if not values:
            raise ModelError(f"{node.name}: an op over constants only should have been folded")
        # NCHW only when every non-constant operand is rank 4 and one of them is NCHW already.
        use_nchw = all(self.b.rank[v] == 4 for v in values) and any(self.b.layout[v] == NCHW for v in values)
        layout = NCHW if use_nchw else TF
        rank = max(self.b.rank[v] for v in values)
        args = []
        for r in refs:
            if self.is_const(r):
                arr = self.const_array(r)
                rank = max(rank, arr.ndim)
                args.append(self.b.const(ProgramBuilder.nchw_const(arr) if use_nchw else arr,
                                         key=(_node_ref(r), layout)))
            else:
                args.append(self.b.as_layout(self.value(r), layout))
        self.b.emit(node.name, op, args, rank, layout)

    def _Add(self, node: Any) -> None:
        self._binary(node, "add")

    _AddV2 = _Add

    def _Sub(self, node: Any) -> None:
        self._binary(node, "sub")

    def _Mul(self, node: Any) -> None:
        self._binary(node, "mul")

    def _RealDiv(self, node: Any) -> None:
        self._binary(node, "div")

    def _Maximum(self, node: Any) -> None:
        self._binary(node, "maximum")

    def _Minimum(self, node: Any) -> None:
        self._binary(node, "minimum")

    def _ConcatV2(self, node: Any) -> None:
        refs = self.data_inputs(node)
        axis = int(self.const_array(refs[-1]))
        values = [self.value(r) for r in refs[:-1]]
        rank = self.b.rank[values[0]]
        axis %= rank
        if rank == 4 and all(self.b.layout[v] == NCHW for v in values):
            layout, axis = NCHW, _NHWC_TO_NCHW_AXIS[axis]
        else:
            layout = TF
        self.b.emit(node.name, "concat", [self.b.as_layout(v, layout) for v in values], rank, layout, axis=axis)

    def _Reshape(self, node: Any) -> None:
        x, shape_ref = self.data_inputs(node)
        shape = tuple(int(s) for s in self.const_array(shape_ref).reshape(-1))
        batch_leading = self.static_batch is not None and len(shape) > 0 and shape[0] == self.static_batch
        xv = self.b.as_layout(self.value(x), TF)
        self.b.emit(node.name, "reshape", [xv], len(shape), TF, shape=shape, batch_leading=batch_leading)

    def _Squeeze(self, node: Any) -> None:
        xv = self.b.as_layout(self.value(node.input[0]), TF)
        axes = _ints(node.attr["squeeze_dims"])
        if not axes:
            raise ModelError(f"{node.name}: Squeeze without explicit axes would depend on the batch size")
        rank = self.b.rank[xv]
        self.b.emit(node.name, "squeeze", [xv], rank - len(axes), TF, axes=tuple(a % rank for a in axes))

    def _reduce(self, node: Any, fn: str) -> None:
        x, axes_ref = self.data_inputs(node)
        xv = self.value(x)
        rank = self.b.rank[xv]
        axes = tuple(sorted({int(a) % rank for a in self.const_array(axes_ref).reshape(-1)}))
        keep = bool(node.attr["keep_dims"].b)
        layout = self.b.layout[xv] if keep else TF
        xv = self.b.as_layout(xv, layout)
        if layout == NCHW:
            axes = tuple(sorted(_NHWC_TO_NCHW_AXIS[a] for a in axes))
        self.b.emit(node.name, "reduce", [xv], rank if keep else rank - len(axes), layout,
                    fn=fn, axes=axes, keepdim=keep)

    def _Sum(self, node: Any) -> None:
        self._reduce(node, "sum")

    def _Mean(self, node: Any) -> None:
        self._reduce(node, "mean")

    def _Max(self, node: Any) -> None:
        self._reduce(node, "max")

    def _MatMul(self, node: Any) -> None:
        a, b = self.data_inputs(node)
        if self.is_const(a):
            raise ModelError(f"{node.name}: a constant left operand is not supported")
        av = self.value(a)
        if node.attr["transpose_a"].b or self.b.rank[av] != 2:
            raise ModelError(f"{node.name}: only an untransposed rank-2 left operand is supported")
        if self.is_const(b):
            w = self.const_array(b)
            weight = w if node.attr["transpose_b"].b else w.T  # F.linear wants (out, in)
            self.b.emit(node.name, "linear", [av, self.b.const(weight, key=(b, "linear"))], 2)
        else:
            if node.attr["transpose_b"].b:
                raise ModelError(f"{node.name}: transpose_b of a non-constant is not supported")
            self.b.emit(node.name, "matmul", [av, self.value(b)], 2)


def load_graphdef(path: Path) -> dict[str, Any]:
    """The nodes of a binary frozen GraphDef by name (parsed with tensorboard's compiled protos)."""
    from tensorboard.compat.proto import graph_pb2  # optional: the export extra (its protos only, no TensorFlow)

    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise ModelError(f"{path}: not a binary TensorFlow GraphDef ({err})") from err
    if len(graph.library.function):
        raise ModelError(f"{path}: graphs with function libraries are not supported")
    return {n.name: n for n in graph.node}


def convert(path: Path, *, input_name: str = "input", output: str | None = None) -> OpProgram:
    """Convert a frozen GraphDef into an :class:`OpProgram` module.

    Args:
        path: the binary ``.pb`` file.
        input_name: the NHWC image placeholder; the module itself takes NCHW.
        output: node to compute. By default the graph's sink, or, when the sink is
            ``tf.nn.l2_normalize``, the tensor it normalises (for facenet ``graph_final.pb`` that is
            ``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1``, the raw 512-d embedding).

    Returns:
        A module mapping float32 ``[B, C, H, W]`` to the output value; weights are float32
        buffers, so nothing requires grad except what the caller feeds in.

    Example:
        >>> net = convert(Path("graph_final.pb"))  # doctest: +SKIP
        >>> net.output_name  # doctest: +SKIP
        'InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1'
    """
    nodes = load_graphdef(path)
    if input_name not in nodes or nodes[input_name].op != "Placeholder":
        raise ModelError(f"{path}: no placeholder named {input_name!r}")
    target = output if output is not None else default_output(nodes)
    if target not in nodes:
        raise ModelError(f"{path}: no node named {target!r}")
    module = _GraphCompiler(nodes, input_name).compile(target)
    module.requires_grad_(False)
    return module.eval()
