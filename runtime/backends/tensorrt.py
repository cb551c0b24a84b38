"""TensorRT backend: builds (or loads from a cache) one engine per surrogate graph and runs it.

Two engines per surrogate, both built from the bundle's ONNX files with TensorRT's ONNX parser:

* the gradient graph ``(x [1,3,S,S], cotangents [1,K,D]) -> (embedding [1,D], grad [1,K,3,S,S])``,
  static shapes;
* the embedding graph ``x [B,3,S,S] -> embedding [B,D]``, dynamic batch, built with one
  optimisation profile ``min 1, opt = max = files.max_batch``.

Engines are serialised to ``cache_dir`` (default ``$EDGECLOAK_HOME/trt-cache``) under a key made
of the ONNX file's sha256, the precision, the TensorRT version, the GPU name and compute
capability and the largest batch (``engine_cache_key``), and written atomically (temp + rename),
so a second load deserialises instead of rebuilding (minutes on a Jetson).

I/O buffers are allocated once per engine: torch CUDA tensors (device) and pinned torch CPU tensors
(host) when torch with CUDA imports, else ``cuda-python`` (``cudaMalloc`` / ``cudaMallocHost``,
plain numpy host arrays if pinning fails). Each call copies the inputs into the host buffers,
uploads, runs ``execute_async_v3`` on the backend's own stream, downloads and synchronises: no
allocation per call. Outputs are views of the host buffers (the next call overwrites them).

API used (TensorRT 8.5, 8.6, 10.x; 11 for fp32): ``Builder``, ``create_network`` (with the
EXPLICIT_BATCH flag before 10), ``OnnxParser.parse_from_file``, ``create_builder_config``,
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``, ``BuilderFlag.FP16``,
``create_optimization_profile`` / ``set_shape`` / ``add_optimization_profile``,
``build_serialized_network``, ``Runtime.deserialize_cuda_engine``, the tensor-name API
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_shape``,
``get_tensor_dtype``) and ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``.

Nothing here imports tensorrt, torch or cuda-python at module level: this module imports on a
machine with none of them, and ``TensorRTBackend.available()`` says why it cannot run there.

Example:
    >>> backend = TensorRTBackend(precision="fp16")                    # doctest: +SKIP
    >>> engine = backend.load(bundle.surrogates[0])                     # doctest: +SKIP
    >>> emb, grad = engine.embed_and_grad(crop, cotangents)             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecloak.errors import EdgecloakError, ModelError, OutputError

from ..atomic import write_bytes_atomic
from ..hashing import sha256_file
from ..paths import edgecloak_home
from .base import Backend, SurrogateEngine, SurrogateFiles
from .pytorch import optional_torch

PRECISIONS = ("fp32", "fp16")
BUFFER_LIBRARIES = ("auto", "torch", "cuda-python")
MIN_TENSORRT = (8, 5)  # tensor-name API + execute_async_v3
DEFAULT_WORKSPACE_BYTES = 1 << 30
# Bump when the way engines are built changes (flags, profiles), so old cache entries are ignored.
ENGINE_CACHE_FORMAT = 1

GRAD_INPUTS = ("x", "cotangents")
GRAD_OUTPUTS = ("embedding", "grad")
EMBED_INPUTS = ("x",)
EMBED_OUTPUTS = ("embedding",)


# --------------------------------------------------------------------------------------------
# Cache key and cache folder (pure, testable without TensorRT)
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where built engines go unless told otherwise: ``<edgecloak home>/trt-cache``."""
    return edgecloak_home() / "trt-cache"


def _normalise_cc(compute_capability: Any) -> str:
    if isinstance(compute_capability, (tuple, list)):
        if len(compute_capability) != 2:
            raise ValueError(f"compute capability {compute_capability!r}: expected (major, minor)")
        return f"{int(compute_capability[0])}.{int(compute_capability[1])}"
    text = str(compute_capability).strip().lower().removeprefix("sm_").removeprefix("sm")
    if "." not in text and text.isdigit() and len(text) >= 2:  # "87" -> "8.7"
        text = f"{text[:-1]}.{text[-1]}"
    major, _, minor = text.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {compute_capability!r}: expected 'major.minor'")
    return f"{int(major)}.{int(minor)}"


def engine_cache_key(onnx_sha256: str, precision: str, trt_version: str, gpu_name: str,
                     compute_capability: Any, max_batch: int) -> str:
    """A 64-hex-digit key naming one built engine; any change of a component changes it.

    ``compute_capability`` may be ``(8, 7)``, ``"8.7"``, ``"sm_87"`` (all the same key).

    >>> k = engine_cache_key("ab" * 32, "fp16", "10.3.0", "Orin", (8, 7), 8)
    >>> len(k), k == engine_cache_key("ab" * 32, "fp16", "10.3.0", "Orin", "8.7", 8)
    (64, True)
    """
    sha = str(onnx_sha256).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"onnx_sha256 {onnx_sha256!r} is not a sha256 hex digest")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if not str(trt_version).strip():
        raise ValueError("trt_version is empty")
    if not str(gpu_name).strip():
        raise ValueError("gpu_name is empty")
    if isinstance(max_batch, bool) or int(max_batch) != max_batch or int(max_batch) < 1:
        raise ValueError(f"max_batch {max_batch!r}: expected an integer >= 1")
    payload = {
        "format": ENGINE_CACHE_FORMAT,
        "onnx_sha256": sha,
        "precision": precision,
        "tensorrt": str(trt_version).strip(),
        "gpu": str(gpu_name).strip(),
        "compute_capability": _normalise_cc(compute_capability),
        "max_batch": int(max_batch),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


# --------------------------------------------------------------------------------------------
# CUDA: which device, which buffer library
# --------------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """Internal: the backend cannot run here; the message is the reason."""


@dataclass(frozen=True)
class CudaInfo:
    library: str  # "torch" or "cuda-python"
    device: int
    gpu_name: str
    compute_capability: str  # "8.7"


def _import_tensorrt():
    try:
        import tensorrt as trt  # optional: NVIDIA's bindings, on TensorRT machines only
    except Exception as exc:  # ImportError, or a stub wheel failing at import
        raise _Unavailable(f"tensorrt is not importable ({type(exc).__name__}: {exc}); install NVIDIA "
                           f"TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} with its Python bindings "
                           "(JetPack ships them)") from exc
    version = str(getattr(trt, "__version__", "") or "")
    if _parse_version(version)[:2] < MIN_TENSORRT:
        raise _Unavailable(f"TensorRT {version or '(unknown version)'} is too old: need >= "
                           f"{'.'.join(map(str, MIN_TENSORRT))} (tensor-name API, execute_async_v3)")
    missing = [name for name in ("Builder", "OnnxParser", "Runtime") if not hasattr(trt, name)]
    if missing:
        raise _Unavailable(f"TensorRT {version} lacks {', '.join(missing)} (a lean/dispatch runtime "
                           "without builder or ONNX parser?)")
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # optional: cuda-python (>= 12.6 layout)
    except ImportError:
        from cuda import cudart  # optional: cuda-python (older layout)
    return cudart


def _cuda_check(result: Any, what: str, cudart: Any) -> Any:
    """cuda-python calls return (err, *values); raise on error, return the value(s)."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(getattr(err, "value", err)) != 0:
        try:
            name = cudart.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001
            name = str(err)
        raise EdgecloakError(f"CUDA: {what} failed ({name})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _probe_torch(device: int) -> CudaInfo:
    try:
        torch = optional_torch()
    except Exception as exc:
        raise _Unavailable(f"torch not importable ({type(exc).__name__})") from exc
    if not torch.cuda.is_available():
        raise _Unavailable(f"torch {torch.__version__} sees no CUDA device")
    count = torch.cuda.device_count()
    if device >= count:
        raise _Unavailable(f"torch sees {count} CUDA device(s), device {device} asked for")
    major, minor = torch.cuda.get_device_capability(device)
    return CudaInfo("torch", device, torch.cuda.get_device_name(device), f"{major}.{minor}")


def _probe_cuda_python(device: int) -> CudaInfo:
    try:
        cudart = _import_cudart()
    except Exception as exc:
        raise _Unavailable(f"cuda-python not importable ({type(exc).__name__})") from exc
    try:
        count = _cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", cudart)
    except EdgecloakError as exc:
        raise _Unavailable(f"cuda-python: {exc}") from exc
    if device >= int(count):
        raise _Unavailable(f"cuda-python sees {count} CUDA device(s), device {device} asked for")
    props = _cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", cudart)
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return CudaInfo("cuda-python", device, str(name), f"{int(props.major)}.{int(props.minor)}")


def _probe_cuda(device: int, library: str = "auto") -> CudaInfo:
    """The device and buffer library to use, or ``_Unavailable`` with every reason found."""
    probes = {"torch": _probe_torch, "cuda-python": _probe_cuda_python}
    order = list(probes) if library == "auto" else [library]
    reasons = []
    for name in order:
        try:
            return probes[name](device)
        except _Unavailable as exc:
            reasons.append(str(exc))
        except Exception as exc:  # noqa: BLE001  (a driver error must not escape available())
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
    raise _Unavailable("no CUDA device usable for TensorRT buffers: " + "; ".join(reasons))


# --------------------------------------------------------------------------------------------
# Buffers: preallocated device + host memory, one stream
# --------------------------------------------------------------------------------------------


class _Buffer:
    """One I/O tensor: a float32 host array of the largest shape and a device allocation."""

    __slots__ = ("device_owner", "device_ptr", "host", "host_owner", "host_ptr", "pinned")

    def __init__(self, host: np.ndarray, host_ptr: int, device_ptr: int, host_owner: Any = None,
                 device_owner: Any = None, pinned: bool = False):
        self.host = host
        self.host_ptr = host_ptr
        self.device_ptr = device_ptr
        self.host_owner = host_owner
        self.device_owner = device_owner
        self.pinned = pinned


class _TorchMemory:
    """Device buffers are torch CUDA tensors, host buffers pinned torch CPU tensors."""

    library = "torch"

    def __init__(self, device: int):
        torch = optional_torch()

        self._torch = torch
        self.device = torch.device("cuda", device)
        self._stream = torch.cuda.Stream(device=self.device)
        self.stream_handle = int(self._stream.cuda_stream)
        self._buffers: list[_Buffer] = []

    def activate(self):
        return self._torch.cuda.device(self.device)

    def alloc(self, shape: tuple[int, ...]) -> _Buffer:
        torch = self._torch
        dev = torch.empty(shape, dtype=torch.float32, device=self.device)
        try:
            host, pinned = torch.empty(shape, dtype=torch.float32, pin_memory=True), True
        except RuntimeError:
            host, pinned = torch.empty(shape, dtype=torch.float32), False
        buf = _Buffer(host.numpy(), host.data_ptr(), dev.data_ptr(), host, dev, pinned)
        self._buffers.append(buf)
        return buf

    def h2d(self, buf: _Buffer, count: int) -> None:
        with self._torch.cuda.stream(self._stream):
            buf.device_owner.view(-1)[:count].copy_(buf.host_owner.view(-1)[:count], non_blocking=True)

    def d2h(self, buf: _Buffer, count: int) -> None:
        with self._torch.cuda.stream(self._stream):
            buf.host_owner.view(-1)[:count].copy_(buf.device_owner.view(-1)[:count], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        for buf in self._buffers:
            buf.host_owner = buf.device_owner = None
        self._buffers.clear()
        self._stream = None


class _CudaPythonMemory:
    """Device buffers from cudaMalloc, host buffers from cudaMallocHost (plain numpy if that fails)."""

    library = "cuda-python"

    def __init__(self, device: int):
        self._rt = _import_cudart()
        self.device = device
        _cuda_check(self._rt.cudaSetDevice(device), "cudaSetDevice", self._rt)
        self._stream = _cuda_check(self._rt.cudaStreamCreate(), "cudaStreamCreate", self._rt)
        self.stream_handle = int(self._stream)
        self._buffers: list[_Buffer] = []

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        _cuda_check(self._rt.cudaSetDevice(self.device), "cudaSetDevice", self._rt)
        yield

    def alloc(self, shape: tuple[int, ...]) -> _Buffer:
        rt = self._rt
        count = int(np.prod(shape))
        nbytes = count * 4
        dptr = int(_cuda_check(rt.cudaMalloc(nbytes), "cudaMalloc", rt))
        try:
            hptr = int(_cuda_check(rt.cudaMallocHost(nbytes), "cudaMallocHost", rt))
            flat = np.ctypeslib.as_array(ctypes.cast(ctypes.c_void_p(hptr), ctypes.POINTER(ctypes.c_float)),
                                         shape=(count,))
            buf = _Buffer(flat.reshape(shape), hptr, dptr, pinned=True)
        except EdgecloakError:
            host = np.empty(shape, dtype=np.float32)
            buf = _Buffer(host, host.ctypes.data, dptr, host_owner=host)
        self._buffers.append(buf)
        return buf

    def h2d(self, buf: _Buffer, count: int) -> None:
        rt = self._rt
        _cuda_check(rt.cudaMemcpyAsync(buf.device_ptr, buf.host_ptr, count * 4,
                                       rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                    "cudaMemcpyAsync (host to device)", rt)

    def d2h(self, buf: _Buffer, count: int) -> None:
        rt = self._rt
        _cuda_check(rt.cudaMemcpyAsync(buf.host_ptr, buf.device_ptr, count * 4,
                                       rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                    "cudaMemcpyAsync (device to host)", rt)

    def synchronize(self) -> None:
        _cuda_check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize", self._rt)

    def close(self) -> None:
        rt = self._rt
        if self._stream is None:
            return
        with contextlib.suppress(Exception):
            rt.cudaStreamSynchronize(self._stream)
        for buf in self._buffers:
            with contextlib.suppress(Exception):
                rt.cudaFree(buf.device_ptr)
            if buf.pinned:
                buf.host = None  # the view dies with the allocation
                with contextlib.suppress(Exception):
                    rt.cudaFreeHost(buf.host_ptr)
        self._buffers.clear()
        with contextlib.suppress(Exception):
            rt.cudaStreamDestroy(self._stream)
        self._stream = None


def _open_memory(info: CudaInfo):
    return _TorchMemory(info.device) if info.library == "torch" else _CudaPythonMemory(info.device)


# --------------------------------------------------------------------------------------------
# Build, cache, run
# --------------------------------------------------------------------------------------------


def _trt_logger(trt):
    """One logger per tensorrt module (TensorRT wants a single logger for builder and runtime).

    Kept on the module object itself: a cache keyed by ``id(trt)`` could hand a logger of a
    collected module to a new one that reuses its address.
    """
    logger = getattr(trt, "_edgecloak_logger", None)
    if logger is None:
        logger = trt.Logger(trt.Logger.WARNING)
        setattr(trt, "_edgecloak_logger", logger)
    return logger


def build_serialized_engine(trt, onnx_path: Path, precision: str, max_batch: int,
                            workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine (bytes). ``ModelError`` if TensorRT refuses.

    Inputs whose first dimension is dynamic get one optimisation profile: 1 .. ``max_batch``
    (opt = max). Any other dynamic dimension is refused.
    """
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    explicit = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
    if _parse_version(trt.__version__)[:1] >= (10,) or explicit is None:
        flags = 0  # explicit batch is the only mode from TensorRT 10 (flag deprecated, then removed)
    else:
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        listed = "; ".join(errors) if errors else "no error reported by the parser"
        raise ModelError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse this ONNX graph "
                         f"({len(errors)} error(s)): {listed}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise EdgecloakError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (networks are strongly "
                                 "typed): use precision='fp32' or export the graphs in fp16")
        config.set_flag(fp16)
    else:
        # TensorRT enables TF32 for fp32 convolutions on Ampere and newer (10-bit mantissa):
        # the fp32 engine must match the torch oracle and ONNX Runtime to the pixel, so keep true fp32.
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None:
            config.clear_flag(tf32)

    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise ModelError(f"{onnx_path}: input {tensor.name!r} has shape {shape}; only the batch "
                             "dimension may be dynamic")
        if shape and shape[0] < 0:
            dynamic.append((tensor.name, shape))
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, shape in dynamic:
            rest = shape[1:]
            profile.set_shape(name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"{onnx_path}: TensorRT {trt.__version__} could not build an engine "
                         f"({precision}, max batch {max_batch}); see the TensorRT messages above")
    return bytes(serialized)


class _TrtGraph:
    """One deserialised engine with its execution context and preallocated, bound buffers."""

    def __init__(self, trt, engine, memory, label: str, inputs: tuple[str, ...], outputs: tuple[str, ...],
                 max_batch: int):
        self.label = label
        self._memory = memory
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EdgecloakError(f"{label}: TensorRT could not create an execution context (GPU memory?)")
        self._context = context

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        found_in = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        found_out = tuple(n for n in names if n not in found_in)
        if set(found_in) != set(inputs) or set(found_out) != set(outputs):
            raise ModelError(f"{label}: engine has inputs {list(found_in)} and outputs {list(found_out)}, "
                             f"expected {list(inputs)} -> {list(outputs)}")
        for name in names:
            dtype = engine.get_tensor_dtype(name)
            if dtype != trt.float32:
                raise ModelError(f"{label}: tensor {name!r} is {dtype}, expected float32")

        self.dynamic: dict[str, bool] = {}
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        for name in inputs:
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            self.dynamic[name] = bool(shape) and shape[0] < 0
            if self.dynamic[name]:
                shape = (max_batch, *shape[1:])
                if not context.set_input_shape(name, shape):
                    raise ModelError(f"{label}: cannot set input {name!r} to {shape}")
            self.max_shapes[name] = shape
        for name in outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError(f"{label}: output {name!r} has unresolved shape {shape}")
            self.max_shapes[name] = shape

        self.inputs = inputs
        self.outputs = outputs
        self._buffers = {name: memory.alloc(self.max_shapes[name]) for name in (*inputs, *outputs)}
        for name, buf in self._buffers.items():
            if not context.set_tensor_address(name, buf.device_ptr):
                raise EdgecloakError(f"{label}: cannot bind tensor {name!r}")
        self._shapes = {name: self.max_shapes[name] for name in (*inputs, *outputs)}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ``feeds``; an input left out of ``feeds`` keeps the value last copied to the GPU
        (a large input that rarely changes is not copied on every call)."""
        memory, context = self._memory, self._context
        with memory.activate():
            shapes_changed = False
            for name in self.inputs:
                if name not in feeds:
                    continue
                arr = feeds[name]
                if arr.shape != self._shapes[name]:
                    if not (self.dynamic[name] and context.set_input_shape(name, arr.shape)):
                        raise ValueError(f"{self.label}: input {name!r} of shape {arr.shape} does not fit "
                                         f"the engine (largest {self.max_shapes[name]})")
                    self._shapes[name] = arr.shape
                    shapes_changed = True
                buf = self._buffers[name]
                np.copyto(buf.host[: arr.shape[0]], arr, casting="same_kind")
                memory.h2d(buf, arr.size)
            if shapes_changed:
                for name in self.outputs:
                    self._shapes[name] = tuple(int(d) for d in context.get_tensor_shape(name))
            if not context.execute_async_v3(memory.stream_handle):
                raise EdgecloakError(f"{self.label}: TensorRT execution failed")
            out = {}
            for name in self.outputs:
                buf, shape = self._buffers[name], self._shapes[name]
                count = int(np.prod(shape))
                memory.d2h(buf, count)
                out[name] = buf.host.reshape(-1)[:count].reshape(shape)
            memory.synchronize()
        return out

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._buffers = {}


class TensorRTEngine(SurrogateEngine):
    """One surrogate on TensorRT: gradient engines (K targets, and one target when the bundle has the
    single-target graph) and an embedding engine, sharing one stream."""

    def __init__(self, files: SurrogateFiles, grad: _TrtGraph, embed: _TrtGraph, memory, description: str,
                 engine_files: dict[str, Path], from_cache: dict[str, bool], held: _TrtGraph | None = None):
        super().__init__(files)
        self._grad_k = grad
        self._grad_1 = held
        self._embed = embed
        self._memory = memory
        self.description = description
        self.engine_files = engine_files  # {"grad": path, "embed": path[, "held_grad": path]} (None: not cached)
        self.from_cache = from_cache  # the same keys: whether each came from the engine cache
        # the plain network's feature_keep, and the gradient graphs whose GPU copy of it is all ones
        # (a dropout mask is copied with its call; ones are copied once, not on every call)
        self._ones = np.ones((1, files.feature_keep_size), np.float32) if files.feature_keep_size else None
        self._ones_on_device: set[bool] = set()  # by held: the single-target graph or the K graph

    @property
    def has_held_graph(self) -> bool:
        return self._grad_1 is not None

    def _gradient(self, crop: np.ndarray, cotangents: np.ndarray, feature_keep: np.ndarray | None = None,
                  held: bool = False) -> tuple[np.ndarray, np.ndarray]:
        graph = self._grad_1 if held else self._grad_k
        f = self.files
        s, k, d = f.input_size, cotangents.shape[1], f.embedding_dim
        if crop.shape != (1, 3, s, s):
            raise ValueError(f"{f.id}: crop shape {crop.shape}, expected (1, 3, {s}, {s})")
        if cotangents.shape != (1, k, d):
            raise ValueError(f"{f.id}: cotangents shape {cotangents.shape}, expected (1, {k}, {d})")
        if graph is None or self._embed is None:
            raise EdgecloakError(f"{f.id}: TensorRT engine is closed")
        feeds = {"x": crop, "cotangents": cotangents}
        if feature_keep is not None:
            feeds["feature_keep"] = feature_keep
            self._ones_on_device.discard(held)
        elif self._ones is not None and held not in self._ones_on_device:
            feeds["feature_keep"] = self._ones
            self._ones_on_device.add(held)
        out = graph.run(feeds)
        return out["embedding"], out["grad"]

    def embed(self, crops: np.ndarray) -> np.ndarray:
        f = self.files
        s = f.input_size
        if crops.ndim != 4 or crops.shape[1:] != (3, s, s) or not 1 <= crops.shape[0] <= f.max_batch:
            raise ValueError(f"{f.id}: crops shape {crops.shape}, expected (B, 3, {s}, {s}) with "
                             f"1 <= B <= {f.max_batch}")
        if self._embed is None:
            raise EdgecloakError(f"{f.id}: TensorRT engine is closed")
        return self._embed.run({"x": crops})["embedding"]

    def close(self) -> None:
        """Free contexts, engines, buffers and the stream. Arrays returned earlier are invalid after this
        (with cuda-python they point into freed pinned memory): copy what you keep. Safe to call twice."""
        for graph in (self._grad_k, self._grad_1, self._embed):
            if graph is not None:
                graph.close()
        self._grad_k = self._grad_1 = self._embed = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None


class TensorRTBackend(Backend):
    """TensorRT engines built from the bundle's ONNX graphs, cached on disk per GPU and version.

    Args:
        precision: ``"fp32"`` (default) or ``"fp16"`` (``BuilderFlag.FP16``; I/O stays float32).
        cache_dir: where serialised engines live (default ``$EDGECLOAK_HOME/trt-cache``).
        device: CUDA device index.
        workspace_bytes: builder workspace limit.
        buffers: ``"auto"`` (torch CUDA tensors if torch has CUDA, else cuda-python), ``"torch"``
            or ``"cuda-python"``.
    """

    name = "tensorrt"

    def __init__(self, precision: str = "fp32", cache_dir: str | Path | None = None, device: int = 0,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, buffers: str = "auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
        if buffers not in BUFFER_LIBRARIES:
            raise ValueError(f"buffers {buffers!r}: expected one of {BUFFER_LIBRARIES}")
        if int(device) < 0:
            raise ValueError(f"device {device!r}: expected an index >= 0")
        self.precision = precision
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.device = int(device)
        self.workspace_bytes = int(workspace_bytes)
        self.buffers = buffers
        self._description: str | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            trt = _import_tensorrt()
            info = _probe_cuda(0)
        except _Unavailable as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001  (never raise from available())
            return False, f"TensorRT check failed: {type(exc).__name__}: {exc}"
        return True, (f"TensorRT {trt.__version__} on {info.gpu_name} (sm {info.compute_capability}), "
                      f"buffers via {info.library}")

    def describe(self) -> str:
        if self._description is not None:
            return self._description
        return f"tensorrt {self.precision} (cuda:{self.device}, not loaded yet)"

    def load(self, files: SurrogateFiles) -> TensorRTEngine:
        try:
            trt = _import_tensorrt()
            info = _probe_cuda(self.device, self.buffers)
        except _Unavailable as exc:
            raise EdgecloakError(f"TensorRT backend unavailable: {exc}") from exc
        held_path = files.held_grad_graph if files.num_targets > 1 else None
        for path in (files.grad_graph, files.embed_graph, *([held_path] if held_path else [])):
            if not Path(path).is_file():
                raise ModelError(f"{files.id}: ONNX graph {path} is missing")

        memory = _open_memory(info)
        graphs: list[_TrtGraph] = []
        engine_files: dict[str, Path | None] = {}
        from_cache: dict[str, bool] = {}

        def start(kind: str, onnx_path: Path, max_batch: int, label: str, inputs, outputs) -> _TrtGraph:
            engine, engine_files[kind], from_cache[kind] = self._engine(trt, runtime, Path(onnx_path), max_batch, info)
            graph = _TrtGraph(trt, engine, memory, f"{files.id} {label}", inputs, outputs, max_batch)
            graphs.append(graph)
            return graph

        try:
            with memory.activate():
                runtime = trt.Runtime(_trt_logger(trt))
                grad_inputs = GRAD_INPUTS + (("feature_keep",) if files.feature_keep_size else ())
                grad = start("grad", files.grad_graph, 1, "gradient graph", grad_inputs, GRAD_OUTPUTS)
                embed = start("embed", files.embed_graph, files.max_batch, "embedding graph", EMBED_INPUTS,
                              EMBED_OUTPUTS)
                held = start("held_grad", held_path, 1, "single-target gradient graph", grad_inputs,
                             GRAD_OUTPUTS) if held_path else None
            self._check_shapes(files, grad, embed, held)
        except BaseException:
            for graph in graphs:
                graph.close()
            memory.close()
            raise
        self._description = (f"TensorRT {trt.__version__} {self.precision} on {info.gpu_name} "
                             f"(cuda:{info.device}, sm {info.compute_capability}), buffers via {info.library}")
        return TensorRTEngine(files, grad, embed, memory, self._description, engine_files, from_cache, held)

    @staticmethod
    def _check_shapes(files: SurrogateFiles, grad: _TrtGraph, embed: _TrtGraph, held: _TrtGraph | None = None) -> None:
        s, k, d, b = files.input_size, files.num_targets, files.embedding_dim, files.max_batch

        def gradient_shapes(k: int) -> dict[str, tuple[int, ...]]:
            shapes = {"x": (1, 3, s, s), "cotangents": (1, k, d), "embedding": (1, d), "grad": (1, k, 3, s, s)}
            if files.feature_keep_size:
                shapes["feature_keep"] = (1, files.feature_keep_size)
            return shapes

        want = {
            "gradient graph": (grad.max_shapes, gradient_shapes(k)),
            "embedding graph": (embed.max_shapes, {"x": (b, 3, s, s), "embedding": (b, d)}),
        }
        if held is not None:
            want["single-target gradient graph"] = (held.max_shapes, gradient_shapes(1))
        for label, (have, expected) in want.items():
            if have != expected:
                raise ModelError(f"{files.id}: {label} shapes {have} do not match the bundle's {expected} "
                                 "(stale or mismatched ONNX?)")

    def _engine(self, trt, runtime, onnx_path: Path, max_batch: int, info: CudaInfo):
        """(deserialised engine, cache file or None, whether it came from the cache)."""
        key = engine_cache_key(sha256_file(onnx_path), self.precision, trt.__version__, info.gpu_name,
                               info.compute_capability, max_batch)
        path = self.cache_dir / f"{key}.engine"
        if path.is_file():
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                return engine, path, True
            warnings.warn(f"TensorRT could not deserialise cached engine {path}; rebuilding", stacklevel=3)
        data = build_serialized_engine(trt, onnx_path, self.precision, max_batch, self.workspace_bytes)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
            write_bytes_atomic(path.with_suffix(".json"), json.dumps({
                "onnx": str(onnx_path), "precision": self.precision, "tensorrt": trt.__version__,
                "gpu": info.gpu_name, "compute_capability": info.compute_capability, "max_batch": max_batch,
            }, indent=1).encode())
            cached: Path | None = path
        except (OSError, OutputError) as exc:
            warnings.warn(f"TensorRT engine not cached ({exc}); it will be rebuilt next time", stacklevel=3)
            cached = None
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelError(f"{onnx_path}: TensorRT built an engine it cannot deserialise")
        return engine, cached, False
