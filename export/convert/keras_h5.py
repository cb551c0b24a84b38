"""Convert a Keras 2 functional-model ``.h5`` file into a torch module, with h5py alone.

The layer graph comes from the ``model_config`` JSON in the file's attributes, the weights from
the ``model_weights/<layer>`` groups. Layers are compiled into the same plain-data
:class:`~edgecloak.export.convert.graphdef.OpProgram` the GraphDef converter produces (NCHW
activations, TensorFlow "SAME" padding, batch norm folded into the convolution before it).

Conversion is strict: an unknown layer type, activation or ``Lambda`` function, or a weight array
in the file that no layer consumed, raises :class:`~edgecloak.errors.ModelError` instead of
producing a silently different network.

``Lambda`` layers hold marshalled Python bytecode. It is never executed (that would run code from
a downloaded file, and bytecode of another Python version does not even load); a Lambda is
accepted only if its bytecode is byte-for-byte a function this module knows, and its parameters
are read from the layer's ``arguments``.

Example:
    >>> from pathlib import Path
    >>> import torch
    >>> from edgecloak.export.convert.keras_h5 import convert
    >>> net = convert(Path("facenet_keras.h5"))  # doctest: +SKIP
    >>> net(torch.zeros(2, 3, 160, 160)).shape  # doctest: +SKIP
    torch.Size([2, 128])
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edgecloak.errors import ModelError
from edgecloak.export.convert.graphdef import NCHW, TF, OpProgram, ProgramBuilder

CONVERTER_VERSION = "keras_h5-1"

# Keras channels_last axis -> our NCHW storage axis (rank-4 values).
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)

# The one Lambda body this converter understands, as marshalled by CPython 3.6 for
# ``lambda inputs, scale: inputs[0] + inputs[1] * scale`` (facenet's residual "ScaleSum").
# The prefix covers the code object's header (2 args, 2 locals, stack 3), its bytecode
#   LOAD_FAST inputs; LOAD_CONST 0; BINARY_SUBSCR; LOAD_FAST inputs; LOAD_CONST 1; BINARY_SUBSCR;
#   LOAD_FAST scale; BINARY_MULTIPLY; BINARY_ADD; RETURN_VALUE
# its constants (None, 0, 1) and its variable names; the source file name after it may differ.
_SCALE_SUM_CODE = (
    b"\xe3\x02\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00S\x00\x00\x00"
    b"s\x14\x00\x00\x00|\x00d\x01\x19\x00|\x00d\x02\x19\x00|\x01\x14\x00\x17\x00S\x00"
    b")\x03N\xe9\x00\x00\x00\x00\xe9\x01\x00\x00\x00\xa9\x00)\x02\xda\x06inputs\xda\x05scale"
)

_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "relu6": "relu6"}


@dataclass(frozen=True)
class KerasModel:
    """What the converter reads from an h5 file: the layer list and the weight arrays by layer."""

    layers: list[dict[str, Any]]
    input_layers: list[list[Any]]
    output_layers: list[list[Any]]
    weights: dict[str, dict[str, np.ndarray]]  # layer -> {"kernel": ..., "bias": ...}
    keras_version: str


def read_h5(path: Path) -> KerasModel:
    """Read ``model_config`` and every layer's weights (by short name: ``kernel``, ``beta``...).

    Example:
        >>> m = read_h5(Path("facenet_keras.h5"))  # doctest: +SKIP
        >>> sorted(m.weights["Conv2d_1a_3x3_BatchNorm"])  # doctest: +SKIP
        ['beta', 'moving_mean', 'moving_variance']
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ModelError(f"{path}: not an HDF5 file ({err})") from err
    with f:
        if "model_config" not in f.attrs:
            raise ModelError(f"{path}: no model_config (a weights-only file cannot be converted)")
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if config.get("class_name") not in ("Model", "Functional"):
            raise ModelError(f"{path}: a functional Keras model was expected, found {config.get('class_name')}")
        group = f["model_weights"] if "model_weights" in f else f
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer_name in group.attrs["layer_names"]:
            layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
            layer_group = group[layer_name]
            arrays: dict[str, np.ndarray] = {}
            for weight_name in layer_group.attrs.get("weight_names", []):
                weight_name = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
                # "Conv2d_1a_3x3/kernel:0" -> "kernel"
                short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
                if short in arrays:
                    raise ModelError(f"{path}: layer {layer_name} has two weights named {short}")
                arrays[short] = np.asarray(layer_group[weight_name], dtype=np.float32)
            weights[layer_name] = arrays
        version = f.attrs.get("keras_version", b"?")
    cfg = config["config"]
    return KerasModel(
        layers=cfg["layers"], input_layers=cfg["input_layers"], output_layers=cfg["output_layers"],
        weights=weights, keras_version=version.decode() if isinstance(version, bytes) else str(version),
    )


class _KerasCompiler:
    """Compiles Keras layer calls into :class:`ProgramBuilder` steps, tracking consumed weights."""

    def __init__(self, model: KerasModel):
        self.model = model
        if len(model.input_layers) != 1 or len(model.output_layers) != 1:
            raise ModelError("only single-input, single-output Keras models are supported")
        self.input_name = self.value_name(model.input_layers[0])
        self.b = ProgramBuilder(self.input_name)
        self.consumed: set[tuple[str, str]] = set()

    @staticmethod
    def value_name(ref: list[Any]) -> str:
        """Our value name for Keras' (layer, node_index, tensor_index) reference."""
        layer, node_index, tensor_index = ref[0], int(ref[1]), int(ref[2])
        if tensor_index != 0:
            raise ModelError(f"{layer}: layers with several outputs are not supported")
        # One call per layer (the common case) keeps the plain Keras name, so intermediates are
        # addressed as in Keras; a layer called again gets a suffix per call.
        return layer if node_index == 0 else f"{layer}#{node_index}"

    def weight(self, layer: str, name: str) -> np.ndarray:
        arrays = self.model.weights.get(layer, {})
        if name not in arrays:
            raise ModelError(f"{layer}: weight {name!r} is missing from the file")
        self.consumed.add((layer, name))
        return arrays[name]

    def compile(self) -> OpProgram:
        for layer in self.model.layers:
            cls, name = layer["class_name"], layer["name"]
            if cls == "InputLayer":
                shape = layer["config"].get("batch_input_shape")
                if shape is None or len(shape) != 4:
                    raise ModelError(f"{name}: an image input [B, H, W, C] was expected, found {shape}")
                continue
            handler = getattr(self, f"_{cls}", None)
            if handler is None:
                raise ModelError(f"{name}: Keras layer type {cls} is not supported")
            for call, inbound in enumerate(layer["inbound_nodes"]):
                inputs = [self.value_name(ref) for ref in inbound]
                out = name if call == 0 else f"{name}#{call}"
                for ref in inbound:
                    if len(ref) > 3 and ref[3]:
                        raise ModelError(f"{name}: call arguments {ref[3]} are not supported")
                handler(layer["config"], out, inputs)
        unused = sorted(
            f"{layer}/{w}" for layer, arrays in self.model.weights.items() for w in arrays
            if (layer, w) not in self.consumed
        )
        if unused:
            raise ModelError(f"weights in the file that no layer used: {unused[:5]} ({len(unused)} in all)")
        return self.b.build(self.value_name(self.model.output_layers[0]))

    # -- helpers ------------------------------------------------------------------------------
    def only(self, out: str, inputs: list[str]) -> str:
        if len(inputs) != 1:
            raise ModelError(f"{out}: one input was expected, found {len(inputs)}")
        return inputs[0]

    def channels_last(self, out: str, config: dict[str, Any]) -> None:
        if config.get("data_format", "channels_last") != "channels_last":
            raise ModelError(f"{out}: only channels_last layers are supported")

    def axis(self, value: str, axis: int) -> int:
        """Keras (channels_last) axis of ``value`` -> axis in our storage."""
        rank = self.b.rank[value]
        axis %= rank
        return _NHWC_TO_NCHW_AXIS[axis] if self.b.layout[value] == NCHW else axis

    def activation(self, out: str, name: str, value: str) -> str:
        """Apply a Keras activation by name; ``linear`` is the identity."""
        if name == "linear":
            return value
        if name not in _ACTIVATIONS:
            raise ModelError(f"{out}: activation {name!r} is not supported")
        return self.b.emit(out, _ACTIVATIONS[name], [value], self.b.rank[value], self.b.layout[value])

    # -- layers -------------------------------------------------------------------------------
    def _Conv2D(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self.channels_last(out, config)
        x = self.b.as_layout(self.only(out, inputs), NCHW)
        layer = config["name"]
        kernel = self.weight(layer, "kernel")  # HWIO
        args = [x, self.b.const(kernel.transpose(3, 2, 0, 1))]  # -> OIHW
        if config.get("use_bias", True):
            args.append(self.b.const(self.weight(layer, "bias")))
        padding = {"same": "SAME", "valid": "VALID"}.get(config["padding"])
        if padding is None:
            raise ModelError(f"{out}: padding {config['padding']!r} is not supported")
        conv_out = out if config.get("activation", "linear") == "linear" else f"{out}#linear"
        self.b.emit(conv_out, "conv2d", args, 4, NCHW, stride=tuple(config["strides"]),
                    dilation=tuple(config.get("dilation_rate", (1, 1))), padding=padding, groups=1)
        self.activation(out, config.get("activation", "linear"), conv_out)

    def _BatchNormalization(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        x = self.only(out, inputs)
        layer = config["name"]
        mean = self.weight(layer, "moving_mean").astype(np.float64)
        var = self.weight(layer, "moving_variance").astype(np.float64)
        # scale=False / center=False mean Keras stores no gamma / beta: they are 1 / 0.
        gamma = self.weight(layer, "gamma").astype(np.float64) if config.get("scale", True) else 1.0
        beta = self.weight(layer, "beta").astype(np.float64) if config.get("center", True) else 0.0
        a = gamma / np.sqrt(var + float(config["epsilon"]))
        c = beta - mean * a
        axis = self.axis(x, int(config.get("axis", -1)))
        if self.b.layout[x] != NCHW and axis != self.b.rank[x] - 1:
            raise ModelError(f"{out}: batch norm over axis {config['axis']} of a rank-{self.b.rank[x]} value")
        self.b.emit(out, "channel", [x, self.b.const(a), self.b.const(c)], self.b.rank[x], self.b.layout[x],
                    fn="affine", axis=axis)

    def _Activation(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        x = self.only(out, inputs)
        if config["activation"] == "linear":
            self.b.emit(out, "identity", [x], self.b.rank[x], self.b.layout[x])
        else:
            self.activation(out, config["activation"], x)

    def _pool(self, config: dict[str, Any], out: str, inputs: list[str], kind: str) -> None:
        self.channels_last(out, config)
        x = self.b.as_layout(self.only(out, inputs), NCHW)
        kernel = tuple(config["pool_size"])
        stride = tuple(config.get("strides") or kernel)  # Keras: strides=None means pool_size
        padding = {"same": "SAME", "valid": "VALID"}[config["padding"]]
        self.b.emit(out, "pool", [x], 4, NCHW, kind=kind, kernel=kernel, stride=stride, padding=padding)

    def _MaxPooling2D(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self._pool(config, out, inputs, "max")

    def _AveragePooling2D(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self._pool(config, out, inputs, "avg")

    def _GlobalAveragePooling2D(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self.channels_last(out, config)
        x = self.b.as_layout(self.only(out, inputs), NCHW)
        self.b.emit(out, "reduce", [x], 2, TF, fn="mean", axes=(2, 3), keepdim=False)

    def _GlobalMaxPooling2D(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self.channels_last(out, config)
        x = self.b.as_layout(self.only(out, inputs), NCHW)
        self.b.emit(out, "reduce", [x], 2, TF, fn="max", axes=(2, 3), keepdim=False)

    def _Concatenate(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        rank = self.b.rank[inputs[0]]
        layout = NCHW if rank == 4 and all(self.b.layout[v] == NCHW for v in inputs) else TF
        values = [self.b.as_layout(v, layout) for v in inputs]
        self.b.emit(out, "concat", values, rank, layout, axis=self.axis(values[0], int(config.get("axis", -1))))

    def _merge(self, out: str, inputs: list[str], op: str) -> None:
        layout = NCHW if all(self.b.layout[v] == NCHW for v in inputs) else TF
        values = [self.b.as_layout(v, layout) for v in inputs]
        acc = values[0]
        for k, v in enumerate(values[1:], start=1):
            name = out if k == len(values) - 1 else f"{out}#{k}"
            acc = self.b.emit(name, op, [acc, v], self.b.rank[inputs[0]], layout)

    def _Add(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self._merge(out, inputs, "add")

    def _Multiply(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        self._merge(out, inputs, "mul")

    def _Lambda(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        function = config.get("function")
        if config.get("function_type") != "lambda" or not isinstance(function, list) or not function:
            raise ModelError(f"{out}: only marshalled lambda functions are recognised")
        code = base64.b64decode(function[0])
        args = config.get("arguments") or {}
        if not code.startswith(_SCALE_SUM_CODE) or set(args) != {"scale"} or len(inputs) != 2:
            raise ModelError(f"{out}: unknown Lambda function (only inputs[0] + inputs[1] * scale is known)")
        x, branch = inputs
        layout = NCHW if self.b.layout[x] == NCHW and self.b.layout[branch] == NCHW else TF
        x, branch = self.b.as_layout(x, layout), self.b.as_layout(branch, layout)
        rank = self.b.rank[x]
        scaled = self.b.emit(f"{out}#scaled", "scale", [branch], rank, layout, factor=float(args["scale"]))
        self.b.emit(out, "add", [x, scaled], rank, layout)

    def _Dropout(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        x = self.only(out, inputs)  # inference: the identity
        self.b.emit(out, "identity", [x], self.b.rank[x], self.b.layout[x])

    def _Flatten(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        x = self.b.as_layout(self.only(out, inputs), TF)  # Keras flattens in NHWC order
        self.b.emit(out, "reshape", [x], 2, TF, shape=(0, -1), batch_leading=True)

    def _Dense(self, config: dict[str, Any], out: str, inputs: list[str]) -> None:
        x = self.only(out, inputs)
        if self.b.rank[x] != 2:
            raise ModelError(f"{out}: Dense over a rank-{self.b.rank[x]} value is not supported")
        layer = config["name"]
        args = [x, self.b.const(self.weight(layer, "kernel").T)]  # (in, out) -> F.linear's (out, in)
        if config.get("use_bias", True):
            args.append(self.b.const(self.weight(layer, "bias")))
        lin_out = out if config.get("activation", "linear") == "linear" else f"{out}#linear"
        self.b.emit(lin_out, "linear", args, 2)
        self.activation(out, config.get("activation", "linear"), lin_out)


def convert(path: Path) -> OpProgram:
    """Convert a Keras 2 ``.h5`` model (layer graph + weights) into an :class:`OpProgram` module.

    The module takes float32 ``[B, C, H, W]`` (the Keras model's NHWC input, transposed) and
    returns the model's output; for ``facenet_keras.h5`` that is the raw 128-d
    ``Bottleneck_BatchNorm`` embedding (the file holds no L2 normalisation). Intermediate values
    keep their Keras layer names (see :meth:`OpProgram.intermediates`); the names of the weight
    arrays the conversion used are in ``module.consumed_weights``.

    Example:
        >>> net = convert(Path("facenet_keras.h5"))  # doctest: +SKIP
        >>> net.output_name  # doctest: +SKIP
        'Bottleneck_BatchNorm'
    """
    model = read_h5(Path(path))
    compiler = _KerasCompiler(model)
    module = compiler.compile()
    module.consumed_weights = tuple(sorted(f"{layer}/{w}" for layer, w in compiler.consumed))
    module.requires_grad_(False)
    return module.eval()
