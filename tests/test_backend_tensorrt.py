"""TensorRT backend.

Three layers:

* always: the module imports without tensorrt/torch/cuda, ``available()`` gives a precise reason
  and never raises, ``engine_cache_key`` is stable and changes with every component;
* always: the build/cache/run plumbing against a small stand-in for the ``tensorrt`` module (the
  subset of the real API the backend calls; it "executes" engines with onnxruntime on tiny linear
  graphs and keeps "device" memory in numpy). It checks our control flow (flags, profile, cache,
  atomic writes, parser errors, partial batches, buffer reuse), not TensorRT itself;
* only where TensorRT runs (else skipped with ``available()``'s reason): real engines built from
  the mobileface gradient and embedding graphs, compared with onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloak.errors import EdgecloakError, ModelError
from edgecloak.runtime.backends import tensorrt as trt_backend
from edgecloak.runtime.backends.base import SurrogateFiles
from edgecloak.runtime.backends.tensorrt import CudaInfo, TensorRTBackend, engine_cache_key

SHA = "0123456789abcdef" * 4


# ------------------------------------------------------------------------------------------
# Import hygiene and available()
# ------------------------------------------------------------------------------------------


def test_module_imports_without_tensorrt_torch_or_cuda():
    """In a fresh interpreter where tensorrt, torch and cuda cannot be imported at all."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        HEAVY = {"tensorrt", "torch", "cuda", "pycuda"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        import edgecloak.runtime.backends.tensorrt as t
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not loaded, loaded
        ok, reason = t.TensorRTBackend.available()
        assert ok is False and "tensorrt is not importable" in reason, reason
        t.TensorRTBackend(precision="fp16").describe()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not loaded, loaded
        print("OK", reason)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")


def test_import_alone_loads_no_heavy_module():
    """Plain import in a fresh interpreter (torch installed or not) pulls in none of them."""
    script = ("import sys, edgecloak.runtime.backends.tensorrt; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tensorrt', 'torch', 'cuda'}))")
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_available_gives_reason():
    ok, reason = TensorRTBackend.available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        assert ok is False
        assert "tensorrt is not importable" in reason


def _fake_module(**attrs) -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    mod.__dict__.update(attrs)
    return mod


def test_available_reasons_without_raising(monkeypatch):
    # too old
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_module(__version__="8.4.3.1", Builder=1, OnnxParser=1,
                                                              Runtime=1))
    ok, reason = TensorRTBackend.available()
    assert not ok and "8.4.3.1 is too old" in reason
    # a runtime without builder / parser (the lean wheel)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_module(__version__="10.3.0", Runtime=1))
    ok, reason = TensorRTBackend.available()
    assert not ok and "Builder" in reason and "OnnxParser" in reason
    # full TensorRT but no CUDA device / buffer library
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_module(__version__="10.3.0", Builder=1, OnnxParser=1,
                                                              Runtime=1))

    def no_torch(device):
        raise trt_backend._Unavailable("torch 2.0+cpu sees no CUDA device")

    def broken_cudart(device):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(trt_backend, "_probe_torch", no_torch)
    monkeypatch.setattr(trt_backend, "_probe_cuda_python", broken_cudart)
    ok, reason = TensorRTBackend.available()
    assert not ok
    assert "no CUDA device usable" in reason and "sees no CUDA device" in reason and "driver exploded" in reason


def test_available_reason_on_this_machine_names_missing_cuda(monkeypatch):
    """With TensorRT present (faked) on a machine without a GPU, the reason is about CUDA."""
    try:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    except ImportError:
        pass
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_module(__version__="8.6.1", Builder=1, OnnxParser=1,
                                                              Runtime=1))
    ok, reason = TensorRTBackend.available()
    assert not ok and reason.startswith("no CUDA device usable for TensorRT buffers")


def test_cuda_python_without_driver_gives_reason():
    """cuda-python installs on driverless machines; its failure becomes a reason, not an exception."""
    try:
        trt_backend._import_cudart()
    except ImportError:
        pytest.skip("cuda-python not installed")
    try:
        info = trt_backend._probe_cuda(0, "cuda-python")
    except trt_backend._Unavailable as exc:
        assert "cuda-python" in str(exc)
    else:
        assert info.library == "cuda-python" and info.gpu_name


def test_load_when_unavailable_raises_clear_error(tmp_path):
    if TensorRTBackend.available()[0]:
        pytest.skip("TensorRT runs here")
    files = SurrogateFiles("m", 8, 4, 2, 2, tmp_path / "g.onnx", tmp_path / "e.onnx")
    with pytest.raises(EdgecloakError, match="TensorRT backend unavailable"):
        TensorRTBackend(cache_dir=tmp_path).load(files)


def test_constructor_options(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TensorRTBackend(precision="int8")
    with pytest.raises(ValueError, match="buffers"):
        TensorRTBackend(buffers="pycuda")
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path / "home"))
    backend = TensorRTBackend()
    assert backend.precision == "fp32" and backend.device == 0
    assert backend.cache_dir == tmp_path / "home" / "trt-cache"
    assert TensorRTBackend(cache_dir=tmp_path / "c").cache_dir == tmp_path / "c"
    assert backend.name == "tensorrt" and "tensorrt" in backend.describe()


def test_default_cache_dir_follows_edgecloak_home(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGECLOAK_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trt_backend.default_cache_dir() == tmp_path / "xdg" / "edgecloak" / "trt-cache"
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path / "h"))
    assert trt_backend.default_cache_dir() == tmp_path / "h" / "trt-cache"


# ------------------------------------------------------------------------------------------
# engine_cache_key
# ------------------------------------------------------------------------------------------

BASE = {"onnx_sha256": SHA, "precision": "fp16", "trt_version": "8.5.2.2", "gpu_name": "Orin",
        "compute_capability": (8, 7), "max_batch": 8}


def test_cache_key_is_stable():
    k = engine_cache_key(**BASE)
    assert k == engine_cache_key(**BASE)
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    # same compute capability however written; sha case-insensitive
    for cc in ("8.7", "sm_87", "87", [8, 7]):
        assert engine_cache_key(**{**BASE, "compute_capability": cc}) == k
    assert engine_cache_key(**{**BASE, "onnx_sha256": SHA.upper()}) == k
    # positional and keyword spellings of the same engine name the same file
    assert engine_cache_key(SHA, "fp16", "8.5.2.2", "Orin", "8.7", 8) == k
    # a pinned value: the key names engine files on disk, so it must not drift silently between
    # releases (a change here orphans every cached engine: bump ENGINE_CACHE_FORMAT on purpose instead)
    assert k == "9819771fa7deca3ebc64b5318a0d4b4b736bdc8d299010aec1cb2860144474ee"
    assert trt_backend.ENGINE_CACHE_FORMAT == 1


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "f" * 64), ("precision", "fp32"), ("trt_version", "8.6.1"), ("gpu_name", "Xavier"),
    ("compute_capability", (7, 2)), ("compute_capability", (8, 6)), ("max_batch", 9), ("max_batch", 1),
])
def test_cache_key_changes_with_each_component(field, value):
    assert engine_cache_key(**{**BASE, field: value}) != engine_cache_key(**BASE)


def test_cache_key_all_components_distinct():
    variants = [BASE] + [{**BASE, f: v} for f, v in [("onnx_sha256", "e" * 64), ("precision", "fp32"),
                                                    ("trt_version", "10.3.0"), ("gpu_name", "H100"),
                                                    ("compute_capability", "9.0"), ("max_batch", 16)]]
    assert len({engine_cache_key(**v) for v in variants}) == len(variants)


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "abc"), ("onnx_sha256", "g" * 64), ("precision", "int8"), ("trt_version", ""),
    ("gpu_name", " "), ("compute_capability", "eight"), ("compute_capability", (8, 7, 1)), ("max_batch", 0),
    ("max_batch", 2.5), ("max_batch", True),
])
def test_cache_key_rejects_bad_components(field, value):
    with pytest.raises(ValueError):
        engine_cache_key(**{**BASE, field: value})


# ------------------------------------------------------------------------------------------
# Plumbing against a stand-in for the tensorrt module
# ------------------------------------------------------------------------------------------

S, D, K, MAX_B = 4, 6, 3, 5


def _linear_graphs(folder: Path, seed: int = 0, k: int = K, feature_keep: bool = False) -> tuple[Path, Path, np.ndarray]:
    """A linear 'recognizer' e = flatten(x) @ W: its gradient graph (k cotangents) and embedding graph.
    ``feature_keep``: the gradient graph multiplies its one feature map (e itself) by a
    ``feature_keep`` [1, D] input, as exported graphs do their convolution outputs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3 * S * S, D)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.copy(), "Wt"),
             numpy_helper.from_array(np.array([1, k, 3, S, S], np.int64), "gshape")]
    if feature_keep:
        forward = [helper.make_node("MatMul", ["xf", "W"], ["features"]),
                   helper.make_node("Mul", ["features", "feature_keep"], ["embedding"]),
                   helper.make_node("Mul", ["cotangents", "feature_keep"], ["kept"]),
                   helper.make_node("MatMul", ["kept", "Wt"], ["gf"])]
    else:
        forward = [helper.make_node("MatMul", ["xf", "W"], ["embedding"]),
                   helper.make_node("MatMul", ["cotangents", "Wt"], ["gf"])]
    grad = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["xf"], axis=1), *forward,
         helper.make_node("Reshape", ["gf", "gshape"], ["grad"])],
        "grad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, S, S]),
         helper.make_tensor_value_info("cotangents", TensorProto.FLOAT, [1, k, D]),
         *([helper.make_tensor_value_info("feature_keep", TensorProto.FLOAT, [1, D])] if feature_keep else [])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, D]),
         helper.make_tensor_value_info("grad", TensorProto.FLOAT, [1, k, 3, S, S])],
        inits)
    embed = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["xf"], axis=1), helper.make_node("MatMul", ["xf", "W"], ["embedding"])],
        "embed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, S, S])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", D])],
        [inits[0]])
    paths = []
    for name, graph in (("grad", grad), ("embed", embed)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path = folder / f"lin{seed}{'keep' if feature_keep else ''}.{name}{'' if k == K else k}.onnx"
        onnx.save(model, str(path))
        paths.append(path)
    return paths[0], paths[1], w


def _files(grad: Path, embed: Path) -> SurrogateFiles:
    return SurrogateFiles(id="lin", input_size=S, embedding_dim=D, num_targets=K, max_batch=MAX_B,
                          grad_graph=grad, embed_graph=embed)


class FakeMemory:
    """'Device' memory in numpy; registry maps device pointers to arrays for the fake engine."""

    library = "fake"
    stream_handle = 1234

    def __init__(self, registry: dict):
        self.registry = registry
        self.allocs = 0
        self.closed = 0

    def activate(self):
        import contextlib
        return contextlib.nullcontext()

    def alloc(self, shape):
        self.allocs += 1
        host = np.full(shape, np.nan, np.float32)
        dev = np.full(shape, np.nan, np.float32)
        self.registry[dev.ctypes.data] = dev
        return trt_backend._Buffer(host, host.ctypes.data, dev.ctypes.data, host, dev)

    def h2d(self, buf, count):
        buf.device_owner.reshape(-1)[:count] = buf.host.reshape(-1)[:count]

    def d2h(self, buf, count):
        buf.host.reshape(-1)[:count] = buf.device_owner.reshape(-1)[:count]

    def synchronize(self):
        pass

    def close(self):
        self.closed += 1


def make_fake_trt(version: str = "8.6.1", with_fp16: bool = True):
    """The subset of the tensorrt module the backend uses; engines run with onnxruntime."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32 = "FLOAT"
    trt.stats = {"builds": 0, "flags": [], "builder_flags": [], "cleared_flags": [], "profiles": [], "pool": [], "contexts": 0}
    registry: dict[int, np.ndarray] = {}
    trt.registry = registry

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    trt.Logger, trt.TensorIOMode = Logger, TensorIOMode
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16"} if with_fp16 else {}), TF32="TF32")
    if version.startswith("8."):
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    else:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)

    def shape_of(vi):
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)

    class Network:
        def __init__(self):
            self.inputs, self.path = [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, node, code, desc):
            self.text = f"In node {node} (importNode): {code}: {desc}"

        def __str__(self):
            return self.text

    class OnnxParser:
        SUPPORTED = frozenset({"Flatten", "MatMul", "Mul", "Reshape"})

        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            try:
                model = onnx.load(path)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(ParserError(-1, "MODEL_DESERIALIZE_FAILED", str(exc)))
                return False
            for i, node in enumerate(model.graph.node):
                if node.op_type not in self.SUPPORTED:
                    self.errors.append(ParserError(i, "UNSUPPORTED_NODE",
                                                   f"No importer registered for op: {node.op_type}"))
            self.network.path = path
            self.network.inputs = [types.SimpleNamespace(name=vi.name, shape=shape_of(vi)) for vi in model.graph.input]
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Config:
        def __init__(self):
            self.flags, self.profiles = [], []

        def set_memory_pool_limit(self, pool, size):
            trt.stats["pool"].append((pool, size))

        def set_flag(self, flag):
            self.flags.append(flag)

        def clear_flag(self, flag):
            self.cleared = [*getattr(self, "cleared", []), flag]

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def create_network(self, flags=0):
            trt.stats["flags"].append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.stats["builds"] += 1
            trt.stats["builder_flags"].append(list(config.flags))
            trt.stats["cleared_flags"].append(list(getattr(config, "cleared", [])))
            profiles = [p.shapes for p in config.profiles]
            trt.stats["profiles"].append(profiles)
            return json.dumps({"path": network.path, "profiles": profiles}).encode()

    class Context:
        def __init__(self, engine):
            trt.stats["contexts"] += 1
            self.engine = engine
            self.shapes = {n: s for n, s in engine.inputs.items()}
            self.addresses = {}

        def set_input_shape(self, name, shape):
            prof = self.engine.profile.get(name)
            shape = tuple(shape)
            if prof is None:
                return shape == self.engine.inputs[name]
            if not (prof[0][0] <= shape[0] <= prof[2][0]) or shape[1:] != prof[2][1:]:
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            batch = self.shapes["x"][0]
            return tuple(batch if d < 0 else d for d in self.engine.outputs[name])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            assert stream_handle == FakeMemory.stream_handle
            feeds = {}
            for name, shape in self.shapes.items():
                n = int(np.prod(shape))
                feeds[name] = registry[self.addresses[name]].reshape(-1)[:n].reshape(shape).copy()
            results = self.engine.session.run(None, feeds)
            for name, value in zip([o.name for o in self.engine.session.get_outputs()], results):
                registry[self.addresses[name]].reshape(-1)[: value.size] = value.reshape(-1)
            return True

    class Engine:
        def __init__(self, blob):
            self.session = ort.InferenceSession(blob["path"], providers=["CPUExecutionProvider"])
            self.inputs = {i.name: tuple(-1 if isinstance(d, str) else d for d in i.shape)
                           for i in self.session.get_inputs()}
            self.outputs = {o.name: tuple(-1 if isinstance(d, str) else d for d in o.shape)
                            for o in self.session.get_outputs()}
            profile = blob["profiles"][0] if blob["profiles"] else {}  # JSON turned tuples into lists
            self.profile = {n: tuple(tuple(s) for s in shapes) for n, shapes in profile.items()}
            self.names = [*self.inputs, *self.outputs]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.inputs.get(name) or self.outputs[name]

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                blob = json.loads(bytes(data))
            except ValueError:
                return None
            return Engine(blob)

    trt.OnnxParser, trt.Builder, trt.Runtime = OnnxParser, Builder, Runtime
    return trt


@pytest.fixture
def fake(monkeypatch):
    """Install a fake tensorrt and a fake CUDA; returns (trt module, memories opened)."""
    trt = make_fake_trt()
    memories = []

    def install(module):
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(trt_backend, "_probe_cuda",
                            lambda device, library="auto": CudaInfo("fake", device, "Fake GPU", "8.7"))

        def open_memory(info):
            memories.append(FakeMemory(module.registry))
            return memories[-1]

        monkeypatch.setattr(trt_backend, "_open_memory", open_memory)
        return module

    install(trt)
    return types.SimpleNamespace(trt=trt, memories=memories, install=install)


@pytest.fixture
def linear(tmp_path):
    grad, embed, w = _linear_graphs(tmp_path)
    return types.SimpleNamespace(grad=grad, embed=embed, w=w, files=_files(grad, embed))


def _inputs(seed=0, batch=1):
    rng = np.random.default_rng(seed)
    crop = rng.uniform(0, 255, (batch, 3, S, S)).astype(np.float32)
    cot = rng.standard_normal((1, K, D)).astype(np.float32)
    return crop, cot


def test_fake_build_run_matches_onnxruntime(fake, linear, tmp_path):
    backend = TensorRTBackend(cache_dir=tmp_path / "cache", workspace_bytes=1 << 20)
    engine = backend.load(linear.files)
    assert "Fake GPU" in backend.describe() and "fp32" in backend.describe()
    crop, cot = _inputs()
    emb, grad = engine.embed_and_grad(crop, cot)
    sess = ort.InferenceSession(str(linear.grad), providers=["CPUExecutionProvider"])
    want_emb, want_grad = sess.run(None, {"x": crop, "cotangents": cot})
    assert emb.shape == (1, D) and grad.shape == (1, K, 3, S, S)
    np.testing.assert_allclose(emb, want_emb, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6)

    esess = ort.InferenceSession(str(linear.embed), providers=["CPUExecutionProvider"])
    for b in (MAX_B, 2, 1, MAX_B):  # shrinking and growing the dynamic batch
        crops, _ = _inputs(seed=b, batch=b)
        got = engine.embed(crops)
        assert got.shape == (b, D)
        np.testing.assert_allclose(got, esess.run(None, {"x": crops})[0], rtol=1e-6)

    # build flags: explicit batch on 8.x, the workspace limit, fp32 has no FP16 flag, one profile 1..max
    stats = fake.trt.stats
    assert stats["builds"] == 2 and stats["flags"] == [1, 1]
    assert stats["pool"] == [("WORKSPACE", 1 << 20)] * 2
    assert stats["builder_flags"] == [[], []]
    assert stats["cleared_flags"] == [["TF32"], ["TF32"]]  # true fp32: TF32 off for parity
    assert stats["profiles"][0] == []
    assert stats["profiles"][1] == [{"x": ((1, 3, S, S), (MAX_B, 3, S, S), (MAX_B, 3, S, S))}]
    engine.close()
    engine.close()
    assert fake.memories[0].closed == 1
    with pytest.raises(EdgecloakError, match="closed"):
        engine.embed(crops)


def test_fake_no_allocation_per_call_and_views(fake, linear, tmp_path):
    engine = TensorRTBackend(cache_dir=tmp_path).load(linear.files)
    mem = fake.memories[0]
    allocs = mem.allocs
    assert allocs == 6  # x, cotangents, embedding, grad; x, embedding
    crop, cot = _inputs(1)
    e1, g1 = engine.embed_and_grad(crop, cot)
    e1_copy = e1.copy()
    e2, g2 = engine.embed_and_grad(crop * 0.5, cot)
    assert mem.allocs == allocs
    assert np.shares_memory(e1, e2) and np.shares_memory(g1, g2)  # views of one host buffer
    np.testing.assert_allclose(e2, 0.5 * e1_copy, rtol=1e-5)
    a = engine.embed(_inputs(2, batch=3)[0])
    b = engine.embed(_inputs(3, batch=3)[0])
    assert mem.allocs == allocs and np.shares_memory(a, b)


def test_fake_input_checks(fake, linear, tmp_path):
    engine = TensorRTBackend(cache_dir=tmp_path).load(linear.files)
    crop, cot = _inputs()
    with pytest.raises(ValueError, match="crop shape"):
        engine.embed_and_grad(np.zeros((2, 3, S, S), np.float32), cot)
    with pytest.raises(ValueError, match=f"takes 1..{K}"):
        engine.embed_and_grad(crop, np.zeros((1, K + 1, D), np.float32))
    with pytest.raises(ValueError, match="cotangents shape"):
        engine.embed_and_grad(crop, np.zeros((1, K, D + 1), np.float32))
    with pytest.raises(ValueError, match="crops shape"):
        engine.embed(np.zeros((MAX_B + 1, 3, S, S), np.float32))
    with pytest.raises(ValueError, match="crops shape"):
        engine.embed(np.zeros((0, 3, S, S), np.float32))
    # float64 input is accepted and cast into the float32 buffer
    emb64, _ = engine.embed_and_grad(crop.astype(np.float64), cot)
    assert emb64.dtype == np.float32


def test_fake_single_target_graph_runs_the_held_steps(fake, linear, tmp_path):
    """With the bundle's single-target graph, one cotangent runs its engine (built and cached beside
    the other two); other counts run the K engine, zero-padded; the gradients are the K graph's rows."""
    held, _, _ = _linear_graphs(tmp_path, k=1)  # same seed: the same W
    files = dataclasses.replace(linear.files, held_grad_graph=held)
    engine = TensorRTBackend(cache_dir=tmp_path / "cache").load(files)
    assert fake.trt.stats["builds"] == 3 and set(engine.from_cache) == {"grad", "embed", "held_grad"}
    assert engine.has_held_graph and fake.trt.stats["profiles"][2] == []
    crop, cot = _inputs()
    want = ort.InferenceSession(str(linear.grad), providers=["CPUExecutionProvider"]).run(
        None, {"x": crop, "cotangents": cot})[1]
    for rows in ([1], [0, 2]):
        emb, grad = engine.embed_and_grad(crop, cot[:, rows])
        assert grad.shape == (1, len(rows), 3, S, S)
        np.testing.assert_allclose(grad, want[:, rows], rtol=1e-5, atol=1e-5)
    again = TensorRTBackend(cache_dir=tmp_path / "cache").load(files)
    assert again.from_cache == {"grad": True, "embed": True, "held_grad": True}
    # a held graph of the wrong shape is refused at load, with which graph it is
    with pytest.raises(ModelError, match="single-target gradient graph shapes"):
        TensorRTBackend(cache_dir=tmp_path / "cache").load(dataclasses.replace(linear.files, held_grad_graph=linear.grad))


def test_fake_feature_dropout_reaches_the_engine_and_does_not_linger(fake, tmp_path):
    """Graphs with a feature_keep input: a call without a mask is the plain network (ones are sent
    once, not on every call), a mask gives the dropped network's gradient, and the next call
    without one is the plain network again."""
    grad, embed, _ = _linear_graphs(tmp_path, feature_keep=True)
    files = dataclasses.replace(_files(grad, embed), feature_keep_size=D)
    engine = TensorRTBackend(cache_dir=tmp_path / "cache").load(files)
    assert engine.can_drop_features
    sess = ort.InferenceSession(str(grad), providers=["CPUExecutionProvider"])
    crop, cot = _inputs()
    ones = np.ones((1, D), np.float32)
    mask = (np.random.default_rng(5).random((1, D)) >= 0.5).astype(np.float32) * 2

    def want(keep):
        return sess.run(None, {"x": crop, "cotangents": cot, "feature_keep": keep})[1]

    for keep in (None, None, mask, None):
        got = engine.embed_and_grad(crop, cot, keep)[1]
        np.testing.assert_allclose(got, want(ones if keep is None else keep), rtol=1e-5, atol=1e-4)
    assert not np.allclose(want(mask), want(ones))
    engine.close()


def test_fake_engine_cache(fake, linear, tmp_path):
    cache = tmp_path / "cache"
    first = TensorRTBackend(cache_dir=cache).load(linear.files)
    assert fake.trt.stats["builds"] == 2 and first.from_cache == {"grad": False, "embed": False}
    engines = sorted(cache.glob("*.engine"))
    assert len(engines) == 2 and set(first.engine_files.values()) == set(engines)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left
    meta = json.loads(first.engine_files["embed"].with_suffix(".json").read_text())
    assert meta["max_batch"] == MAX_B and meta["gpu"] == "Fake GPU" and meta["precision"] == "fp32"

    second = TensorRTBackend(cache_dir=cache).load(linear.files)
    assert fake.trt.stats["builds"] == 2 and second.from_cache == {"grad": True, "embed": True}
    crop, cot = _inputs()
    np.testing.assert_array_equal(second.embed_and_grad(crop, cot)[0], first.embed_and_grad(crop, cot)[0])

    # fp16 is another engine (and sets the FP16 flag)
    TensorRTBackend(cache_dir=cache, precision="fp16").load(linear.files)
    assert fake.trt.stats["builds"] == 4 and fake.trt.stats["builder_flags"][-1] == ["FP16"]
    # another max_batch rebuilds only the embedding engine (the gradient graph is batch 1)
    other = TensorRTBackend(cache_dir=cache).load(dataclasses.replace(linear.files, max_batch=3))
    assert other.from_cache == {"grad": True, "embed": False} and fake.trt.stats["builds"] == 5
    # another TensorRT version rebuilds both
    newer = make_fake_trt("8.6.2")
    fake.install(newer)
    TensorRTBackend(cache_dir=cache).load(linear.files)
    assert newer.stats["builds"] == 2
    # a different ONNX file (new weights) rebuilds
    g2, e2, _ = _linear_graphs(tmp_path, seed=1)
    TensorRTBackend(cache_dir=cache).load(_files(g2, e2))
    assert newer.stats["builds"] == 4


def test_fake_corrupt_cache_entry_is_rebuilt(fake, linear, tmp_path):
    first = TensorRTBackend(cache_dir=tmp_path).load(linear.files)
    first.engine_files["grad"].write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = TensorRTBackend(cache_dir=tmp_path).load(linear.files)
    assert again.from_cache == {"grad": False, "embed": True}
    assert json.loads(first.engine_files["grad"].read_bytes())  # rewritten whole


def test_fake_unwritable_cache_still_loads(fake, linear, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="not cached"):
        engine = TensorRTBackend(cache_dir=blocker / "cache").load(linear.files)
    assert engine.engine_files == {"grad": None, "embed": None}
    assert engine.embed(_inputs(batch=2)[0]).shape == (2, D)


def test_fake_parser_errors_are_listed(fake, tmp_path):
    grad, embed, _ = _linear_graphs(tmp_path)
    model = onnx.load(str(grad))
    model.graph.node[1].op_type = "Einsum"
    model.graph.node[2].op_type = "Einsum"
    onnx.save(model, str(grad))
    with pytest.raises(ModelError) as info:
        TensorRTBackend(cache_dir=tmp_path / "c").load(_files(grad, embed))
    msg = str(info.value)
    assert "cannot parse" in msg and "2 error(s)" in msg and str(grad) in msg
    assert "In node 1 (importNode): UNSUPPORTED_NODE: No importer registered for op: Einsum" in msg
    assert "In node 2" in msg
    assert fake.memories[0].closed == 1  # buffers released on failure
    assert not list((tmp_path / "c").glob("*.engine"))


def test_fake_unreadable_onnx(fake, tmp_path):
    grad, embed, _ = _linear_graphs(tmp_path)
    grad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="MODEL_DESERIALIZE_FAILED"):
        TensorRTBackend(cache_dir=tmp_path).load(_files(grad, embed))
    with pytest.raises(ModelError, match="missing"):
        TensorRTBackend(cache_dir=tmp_path).load(_files(tmp_path / "nope.onnx", embed))


def test_fake_shapes_must_match_bundle(fake, linear, tmp_path):
    wrong = SurrogateFiles("lin", S, D, K + 1, MAX_B, linear.grad, linear.embed)
    with pytest.raises(ModelError, match="do not match"):
        TensorRTBackend(cache_dir=tmp_path).load(wrong)


def test_fake_tensorrt10_flags(fake, linear, tmp_path):
    trt10 = fake.install(make_fake_trt("10.3.0"))
    TensorRTBackend(cache_dir=tmp_path, precision="fp16").load(linear.files)
    assert trt10.stats["flags"] == [0, 0]  # no EXPLICIT_BATCH from 10 on
    assert trt10.stats["builder_flags"] == [["FP16"], ["FP16"]]


def test_fake_fp16_without_builder_flag(fake, linear, tmp_path):
    fake.install(make_fake_trt("11.0.0", with_fp16=False))
    with pytest.raises(EdgecloakError, match="no BuilderFlag.FP16"):
        TensorRTBackend(cache_dir=tmp_path, precision="fp16").load(linear.files)
    engine = TensorRTBackend(cache_dir=tmp_path, precision="fp32").load(linear.files)
    assert engine.embed(_inputs(batch=1)[0]).shape == (1, D)


# ------------------------------------------------------------------------------------------
# Real TensorRT (skipped unless it runs here)
# ------------------------------------------------------------------------------------------

REAL_K = 10
REAL_MAX_B = 4


@pytest.fixture(scope="module")
def real_graphs(request, tmp_path_factory):
    ok, reason = TensorRTBackend.available()
    if not ok:
        pytest.skip(reason)
    import torch

    from edgecloak.export import gradgraph

    rec = request.getfixturevalue("recognizer")("mobileface")
    folder = tmp_path_factory.mktemp("trt-graphs")
    grad = gradgraph.export_gradient_graph(rec, folder / "mobileface.grad.onnx", num_targets=REAL_K, feature_keep=True)
    embed = folder / "mobileface.embed.onnx"
    if hasattr(gradgraph, "export_embedding_graph"):
        gradgraph.export_embedding_graph(rec, embed, max_batch=REAL_MAX_B)
    else:  # same recipe by hand: dynamo export with a dynamic batch, down to opset 17
        s = rec.input_size
        batch = torch.export.Dim("batch", min=1, max=REAL_MAX_B)
        program = torch.onnx.export(rec.eval(), (torch.zeros(2, 3, s, s),), dynamo=True, opset_version=18,
                                    input_names=["x"], output_names=["embedding"], dynamic_shapes=({0: batch},))
        program.save(str(embed), external_data=False)
        model = gradgraph._to_opset17(onnx.load(str(embed)))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(embed))
    files = SurrogateFiles(id="mobileface", input_size=rec.input_size, embedding_dim=rec.spec.embedding_dim,
                           num_targets=REAL_K, max_batch=REAL_MAX_B, grad_graph=grad, embed_graph=embed,
                           feature_keep_size=sum(gradgraph.feature_map_sizes(rec)))
    return files


def _onnxruntime_gradient(files: SurrogateFiles, crop, cot, feature_keep=None):
    """The ONNX Runtime reference on the same graph (the plain network unless a mask is given)."""
    sess = ort.InferenceSession(str(files.grad_graph), providers=["CPUExecutionProvider"])
    keep = np.ones((1, files.feature_keep_size), np.float32) if feature_keep is None else feature_keep
    return sess.run(None, {"x": crop, "cotangents": cot, "feature_keep": keep})


def _real_inputs(files: SurrogateFiles, batch: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = files.input_size
    yy, xx = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s), indexing="ij")
    base = np.stack([128 + 90 * np.sin(6 * xx + 2 * yy), 128 + 80 * np.cos(5 * yy - 3 * xx),
                     128 + 60 * np.sin(9 * xx * yy + 1)])[None]
    crops = np.clip(base + 10 * rng.standard_normal((batch, 3, s, s)), 0, 255).astype(np.float32)
    cot = rng.standard_normal((1, files.num_targets, files.embedding_dim)).astype(np.float32)
    return crops, cot


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cos(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_real_fp32_matches_onnxruntime(real_graphs, tmp_path):
    files = real_graphs
    engine = TensorRTBackend(cache_dir=tmp_path / "cache").load(files)
    try:
        crop, cot = _real_inputs(files)
        emb, grad = engine.embed_and_grad(crop, cot)
        want_emb, want_grad = _onnxruntime_gradient(files, crop, cot)
        assert emb.shape == want_emb.shape and grad.shape == want_grad.shape
        # TF32 is on by default in TensorRT for fp32 engines on Ampere+: allow ~1e-3.
        assert _rel(emb, want_emb) < 2e-3, _rel(emb, want_emb)
        assert _rel(grad, want_grad) < 1e-2, _rel(grad, want_grad)
        assert np.mean(np.sign(grad) == np.sign(want_grad)) > 0.98

        esess = ort.InferenceSession(str(files.embed_graph), providers=["CPUExecutionProvider"])
        for b in (REAL_MAX_B, 1, 3):
            crops, _ = _real_inputs(files, batch=b, seed=b)
            got = engine.embed(crops)
            want = esess.run(None, {"x": crops})[0]
            assert got.shape == want.shape == (b, files.embedding_dim)
            assert _rel(got, want) < 2e-3
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    finally:
        engine.close()


def test_real_fp16_gradient_fidelity(real_graphs, tmp_path):
    files = real_graphs
    engine = TensorRTBackend(precision="fp16", cache_dir=tmp_path / "cache").load(files)
    try:
        crop, cot = _real_inputs(files)
        emb, grad = engine.embed_and_grad(crop, cot)
        want_emb, want_grad = _onnxruntime_gradient(files, crop, cot)
        # judged by gradient fidelity, not embedding accuracy (docs/design.md)
        assert _cos(emb, want_emb) > 0.999
        assert _cos(grad, want_grad) > 0.99
        assert np.mean(np.sign(grad) == np.sign(want_grad)) > 0.95
    finally:
        engine.close()


def test_real_feature_dropout_matches_onnxruntime_and_does_not_linger(real_graphs, tmp_path):
    """A dropout mask reaches the engine (the gradient is the dropped network's, as in ONNX Runtime),
    and the next call without one is the plain network again (ones are re-sent, not assumed)."""
    from edgecloak.runtime.diversity import dropout_mask

    files = real_graphs
    engine = TensorRTBackend(cache_dir=tmp_path / "cache").load(files)
    try:
        crop, cot = _real_inputs(files)
        plain = engine.embed_and_grad(crop, cot)[1].copy()
        mask = dropout_mask(0.1, np.random.default_rng(0), np.empty((1, files.feature_keep_size), np.float32))
        dropped = engine.embed_and_grad(crop, cot, mask)[1].copy()
        want = _onnxruntime_gradient(files, crop, cot, mask)[1]
        assert _rel(dropped, want) < 1e-2, _rel(dropped, want)
        assert _rel(dropped, plain) > 0.1
        assert _rel(engine.embed_and_grad(crop, cot)[1], plain) < 1e-6
    finally:
        engine.close()


def test_real_engine_cache_reused(real_graphs, tmp_path):
    files = real_graphs
    cache = tmp_path / "cache"
    first = TensorRTBackend(cache_dir=cache).load(files)
    crop, cot = _real_inputs(files)
    emb1 = first.embed_and_grad(crop, cot)[0].copy()
    first.close()
    second = TensorRTBackend(cache_dir=cache).load(files)
    try:
        assert first.from_cache == {"grad": False, "embed": False}
        assert second.from_cache == {"grad": True, "embed": True}
        assert len(list(cache.glob("*.engine"))) == 2
        np.testing.assert_array_equal(second.embed_and_grad(crop, cot)[0], emb1)
    finally:
        second.close()


@pytest.mark.parametrize("library", ["torch", "cuda-python"])
def test_real_buffer_libraries_agree(real_graphs, tmp_path, library):
    files = real_graphs
    try:
        engine = TensorRTBackend(cache_dir=tmp_path, buffers=library).load(files)
    except EdgecloakError as exc:
        pytest.skip(str(exc))
    try:
        crops, _ = _real_inputs(files, batch=2)
        esess = ort.InferenceSession(str(files.embed_graph), providers=["CPUExecutionProvider"])
        assert _rel(engine.embed(crops), esess.run(None, {"x": crops})[0]) < 2e-3
    finally:
        engine.close()


def test_real_parser_error_is_model_error(tmp_path):
    ok, reason = TensorRTBackend.available()
    if not ok:
        pytest.skip(reason)
    import tensorrt as trt

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="edgecloak.test")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("edgecloak.test", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="cannot parse") as info:
        trt_backend.build_serialized_engine(trt, path, "fp32", 1)
    assert "NoSuchOp" in str(info.value)
