"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu.

Every call goes through an ``IOBinding`` onto buffers allocated once per engine: on the CPU
provider the numpy arrays themselves are the bound memory, so a step copies the crop in and reads
the gradient out of the same arrays every time (no per-step allocation inside ORT or here).
On GPU providers inputs are bound from the host arrays and outputs copied back to them.

Example:
    >>> backend = OnnxRuntimeBackend()                              # doctest: +SKIP
    >>> engine = backend.load(bundle.surrogates[0])                 # doctest: +SKIP
    >>> emb, grad = engine.embed_and_grad(crop, cotangents)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnxruntime as ort

from edgecloak.errors import ModelError

from ..parallel import cpu_threads
from .base import Backend, SurrogateEngine, SurrogateFiles

# Preference order when onnxruntime-gpu provides more than the CPU.
_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def best_providers() -> list[str]:
    """Available providers in preference order (TensorRT EP, CUDA EP, CPU)."""
    have = set(ort.get_available_providers())
    return [p for p in _PROVIDER_ORDER if p in have] or ["CPUExecutionProvider"]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Full graph optimisation, ``threads`` intra-op threads (0: one per usable CPU), no spinning.

    Measured on the 2-core CI machine, faceres's K=10 gradient graph: ORT's own default thread
    count 293 ms per call, 2 threads 259 ms, 2 threads without spin-waiting 241 ms (the loop
    alternates engine calls with numpy work, so spinning workers only steal the CPU from it).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxRuntimeEngine(SurrogateEngine):
    """The graphs of one surrogate in ONNX Runtime sessions with preallocated bound buffers."""

    def __init__(self, files: SurrogateFiles, providers: Sequence[str], threads: int = 0):
        super().__init__(files)
        opts = session_options(threads)
        s, k, d = files.input_size, files.num_targets, files.embedding_dim
        self.grad_session = _session(files.grad_graph, providers, opts)
        self.embed_session = _session(files.embed_graph, providers, opts)
        self.provider = self.grad_session.get_providers()[0]
        self._on_cpu = self.provider == "CPUExecutionProvider"
        self._x = np.zeros((1, 3, s, s), np.float32)  # shared by both gradient graphs
        # the convolution outputs' multipliers, shared by both gradient graphs: ones (the plain
        # network) unless a call brings a dropout mask; None for graphs without the input
        self._keep = np.ones((1, files.feature_keep_size), np.float32) if files.feature_keep_size else None
        self._keep_is_ones = True
        self._emb = np.zeros((1, d), np.float32)
        self._grad_k = self._bound_grad(self.grad_session, k)
        self._grad_1 = self._bound_grad(_session(files.held_grad_graph, providers, opts), 1) \
            if self.has_held_graph else None
        self._batch = np.zeros((files.max_batch, 3, s, s), np.float32)
        self._batch_emb = np.zeros((files.max_batch, d), np.float32)
        self._embed_bindings: dict[int, ort.IOBinding] = {}

    def _bound_grad(self, session: ort.InferenceSession, k: int) -> "_BoundGradient":
        f = self.files
        cot = np.zeros((1, k, f.embedding_dim), np.float32)
        grad = np.zeros((1, k, 3, f.input_size, f.input_size), np.float32)
        binding = session.io_binding()
        inputs = {"x": self._x, "cotangents": cot}
        if self._keep is not None:
            inputs["feature_keep"] = self._keep
        self._bind(binding, inputs, {"embedding": self._emb, "grad": grad})
        return _BoundGradient(session, binding, cot, grad)

    def _bind(self, binding: ort.IOBinding, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        for name, arr in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for name, arr in outputs.items():
            if self._on_cpu:
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
            else:
                binding.bind_output(name, "cuda")

    def _run(self, session: ort.InferenceSession, binding: ort.IOBinding, outputs: list[np.ndarray]) -> None:
        session.run_with_iobinding(binding)
        if not self._on_cpu:  # device outputs: copy into our host buffers
            for arr, value in zip(outputs, binding.get_outputs()):
                np.copyto(arr, value.numpy())

    def _gradient(self, crop: np.ndarray, cotangents: np.ndarray, feature_keep: np.ndarray | None = None,
                  held: bool = False) -> tuple[np.ndarray, np.ndarray]:
        graph = self._grad_1 if held else self._grad_k
        np.copyto(self._x, crop)
        np.copyto(graph.cotangents, cotangents)
        if feature_keep is not None:
            np.copyto(self._keep, feature_keep)
            self._keep_is_ones = False
        elif not self._keep_is_ones:  # back to the plain network after a dropped step
            self._keep.fill(1.0)
            self._keep_is_ones = True
        self._run(graph.session, graph.binding, [self._emb, graph.grad])
        return self._emb, graph.grad

    def embed(self, crops: np.ndarray) -> np.ndarray:
        b = crops.shape[0]
        if not 1 <= b <= self.files.max_batch:
            raise ValueError(f"{self.id}: batch {b} outside 1..{self.files.max_batch}")
        binding = self._embed_bindings.get(b)
        if binding is None:  # one binding per batch size, made once (views of the same buffers)
            binding = self.embed_session.io_binding()
            self._bind(binding, {"x": self._batch[:b]}, {"embedding": self._batch_emb[:b]})
            self._embed_bindings[b] = binding
        np.copyto(self._batch[:b], crops)
        self._run(self.embed_session, binding, [self._batch_emb[:b]])
        return self._batch_emb[:b]


@dataclass(frozen=True)
class _BoundGradient:
    """One gradient graph's session, its binding and the bound cotangent and gradient buffers."""

    session: ort.InferenceSession
    binding: ort.IOBinding
    cotangents: np.ndarray
    grad: np.ndarray


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with the best available execution provider (or the ones given)."""

    name = "onnxruntime"

    def __init__(self, providers: Sequence[str] | None = None, threads: int = 0):
        self.providers = list(providers) if providers else best_providers()
        self.threads = threads

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, f"onnxruntime {ort.__version__} ({', '.join(best_providers())})"

    def load(self, files: SurrogateFiles) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(files, self.providers, self.threads)

    def describe(self) -> str:
        return f"onnxruntime {ort.__version__} [{self.providers[0]}]"


def _session(path, providers: Sequence[str], options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types
        raise ModelError(f"{path}: onnxruntime cannot load this graph ({str(exc).splitlines()[0]})") from exc
