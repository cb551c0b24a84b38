"""Bundle manifests: one typed reader that refuses every malformed or hostile manifest with one
ModelError line, never a traceback, and never opens a file outside the bundle it reads.

Most cases use a small fake bundle (fake graph bytes, real targets.npz and preset.json):
validation and hashing happen before any graph is opened, so the graphs' contents do not matter.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloak.errors import ModelError
from edgecloak.runtime.bundle import (MANIFEST, Bundle, BundleManifest, RecipeEntry, SurrogateEntry,
                                      preset_from_json)
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.targets import TargetBank

SECRET = b"not part of any bundle\n"


def make_fake_bundle(root: Path) -> Path:
    """A bundle with one surrogate ``m`` (K 2, D 4) whose graphs are placeholder bytes."""
    (root / "surrogates").mkdir(parents=True)
    (root / "detector").mkdir()
    for rel in ("surrogates/m.grad.onnx", "surrogates/m.embed.onnx", "detector/pnet.onnx", "detector/rnet.onnx",
                "detector/onet.onnx"):
        (root / rel).write_bytes(f"placeholder {rel}".encode())
    emb = np.eye(2, 4, dtype=np.float32)
    TargetBank(["t0", "t1"], {"m": emb}).save(root / "targets.npz")
    (root / "preset.json").write_text(json.dumps(TIPIMConfig(steps=8).to_dict()))
    manifest = BundleManifest(
        num_targets=2, files={}, recipe=RecipeEntry("fast", 1), opset=17, target_identities=["t0", "t1"],
        surrogates=[SurrogateEntry("m", 112, 1.0, 4, 2, "surrogates/m.grad.onnx", "surrogates/m.embed.onnx")],
    )
    manifest.hash_files(root)
    manifest.write(root)
    return root


@pytest.fixture
def fake(tmp_path) -> Path:
    """A valid fake bundle at tmp_path/bundle, and a secret file at tmp_path/outside/secret.onnx."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.onnx").write_bytes(SECRET)
    return make_fake_bundle(tmp_path / "bundle")


def raw(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def put(root: Path, manifest) -> None:
    """Write a manifest as it is (no validation: these are the attacker's bytes)."""
    (root / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))


def rehash(root: Path, rel: str) -> None:
    """Record a file's new sha256 in the manifest, as a forger with write access would."""
    m = raw(root)
    m["files"][rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    put(root, m)


SECRET_SHA = hashlib.sha256(SECRET).hexdigest()


def test_the_fake_bundle_loads_and_round_trips(fake):
    bundle = Bundle.load(fake)
    assert [s.id for s in bundle.surrogates] == ["m"] and bundle.num_targets == 2
    assert bundle.preset.steps == 8 and bundle.recipe == RecipeEntry("fast", 1)
    assert BundleManifest.from_dict(raw(fake)).to_dict() == raw(fake)


# -- attacks: paths -------------------------------------------------------------------------------

def test_a_dotdot_file_entry_is_refused(fake):
    m = raw(fake)
    m["files"]["../outside/secret.onnx"] = SECRET_SHA  # hash right: only the path check stands in the way
    put(fake, m)
    with pytest.raises(ModelError, match="relative path inside the bundle"):
        Bundle.load(fake)


@pytest.mark.parametrize("field", ["files", "grad_graph", "extra", "targets", "preset", "detector"])
def test_an_absolute_path_is_refused(fake, tmp_path, field):
    secret = str(tmp_path / "outside" / "secret.onnx")
    m = raw(fake)
    m["files"][secret] = SECRET_SHA
    if field == "grad_graph":
        m["surrogates"][0]["grad_graph"] = secret
    elif field == "extra":
        m["surrogates"][0]["extra"] = {"torch": secret}
    elif field in ("targets", "preset"):
        m[field] = secret
    elif field == "detector":
        m["detector"]["dir"] = str(tmp_path / "outside")
    put(fake, m)
    with pytest.raises(ModelError, match="relative path inside the bundle"):
        Bundle.load(fake)


@pytest.mark.parametrize("path", ["../outside/secret.onnx", "surrogates/unlisted.grad.onnx"])
def test_a_graph_not_listed_in_files_is_refused(fake, path):
    m = raw(fake)
    m["surrogates"][0]["grad_graph"] = path
    put(fake, m)
    if not path.startswith(".."):
        (fake / path).write_bytes(b"an unlisted graph")
    with pytest.raises(ModelError, match="relative path|not listed"):
        Bundle.load(fake)


def test_every_named_path_must_be_listed(fake):
    valid = raw(fake)
    for drop in ("surrogates/m.embed.onnx", "detector/onet.onnx", "targets.npz", "preset.json"):
        m = copy.deepcopy(valid)
        del m["files"][drop]
        put(fake, m)
        with pytest.raises(ModelError, match=f"{drop} is used but not listed"):
            Bundle.load(fake)


def test_a_symlink_to_a_file_outside_is_refused(fake, tmp_path):
    graph = fake / "surrogates" / "m.grad.onnx"
    graph.unlink()
    graph.symlink_to(tmp_path / "outside" / "secret.onnx")
    rehash(fake, "surrogates/m.grad.onnx")  # the hash matches the outside file: the path check must catch it
    with pytest.raises(ModelError, match="leads outside the bundle"):
        Bundle.load(fake)


def test_a_symlinked_folder_leading_outside_is_refused(fake, tmp_path):
    for name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
        shutil.copy(fake / "detector" / name, tmp_path / "outside" / name)
    shutil.rmtree(fake / "detector")
    (fake / "detector").symlink_to(tmp_path / "outside")
    with pytest.raises(ModelError, match="leads outside the bundle"):
        Bundle.load(fake)


def test_a_symlink_inside_the_bundle_is_fine(fake):
    (fake / "surrogates" / "copy.onnx").write_bytes((fake / "surrogates" / "m.grad.onnx").read_bytes())
    (fake / "surrogates" / "m.grad.onnx").unlink()
    (fake / "surrogates" / "m.grad.onnx").symlink_to("copy.onnx")
    rehash(fake, "surrogates/copy.onnx")
    Bundle.load(fake)


def test_a_manifest_symlinked_from_outside_is_refused(fake, tmp_path):
    (tmp_path / "outside" / MANIFEST).write_text((fake / MANIFEST).read_text())
    (fake / MANIFEST).unlink()
    (fake / MANIFEST).symlink_to(tmp_path / "outside" / MANIFEST)
    with pytest.raises(ModelError, match="leads outside the bundle"):
        Bundle.load(fake)


@pytest.mark.parametrize("digest", [None, "", "abc", "A" * 64, "g" * 64, 7, ["0" * 64]])
def test_a_hash_that_is_not_a_sha256_is_refused(fake, digest):
    m = raw(fake)
    m["files"]["targets.npz"] = digest
    put(fake, m)
    with pytest.raises(ModelError, match="must be a sha256"):
        Bundle.load(fake)


# -- malformed manifests and presets -----------------------------------------------------------------

def _set(path: str, value):
    """A mutation: set a dotted path (``surrogates.0.input_size``) to ``value``; ``...`` deletes it."""
    def apply(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = value
        return m
    return apply


MALFORMED = {
    "an empty list": lambda m: [],
    "null": lambda m: None,
    "a string": lambda m: "manifest",
    "not JSON": lambda m: "{not json",
    "deeply nested": lambda m: "[" * 100_000,
    "files a list": _set("files", ["targets.npz"]),
    "files missing": _set("files", ...),
    "num_targets missing": _set("num_targets", ...),
    "num_targets a string": _set("num_targets", "10"),
    "num_targets a float": _set("num_targets", 2.5),
    "num_targets true": _set("num_targets", True),
    "num_targets 0": _set("num_targets", 0),
    "num_targets huge": _set("num_targets", 10 ** 400),
    "surrogates missing": _set("surrogates", ...),
    "surrogates an object": _set("surrogates", {"id": "m"}),
    "surrogates of numbers": _set("surrogates", [1, 2]),
    "surrogates empty": _set("surrogates", []),
    "a surrogate without input_size": _set("surrogates.0.input_size", ...),
    "a surrogate without id": _set("surrogates.0.id", ...),
    "input_size a string": _set("surrogates.0.input_size", "112"),
    "crop_scale a string": _set("surrogates.0.crop_scale", "1"),
    "crop_scale 0": _set("surrogates.0.crop_scale", 0),
    "crop_scale NaN": _set("surrogates.0.crop_scale", float("nan")),
    "embedding_dim null": _set("surrogates.0.embedding_dim", None),
    "extra a list": _set("surrogates.0.extra", ["x"]),
    "grad_graph a number": _set("surrogates.0.grad_graph", 3),
    "precision a string": _set("surrogates.0.precision", "fp16"),
    "shapes a list": _set("surrogates.0.shapes", [1]),
    "feature_keep a number": _set("surrogates.0.shapes", {"feature_keep": 42}),
    "feature_keep of batch 2": _set("surrogates.0.shapes", {"feature_keep": [2, 42]}),
    "feature_keep empty": _set("surrogates.0.shapes", {"feature_keep": [1, 0]}),
    "feature_keep huge": _set("surrogates.0.shapes", {"feature_keep": [1, 1 << 40]}),
    "failed precision without figures": _set("surrogates.0.precision", {"name": "int8", "passed": False}),
    "repeated surrogate": lambda m: {**m, "surrogates": m["surrogates"] * 2},
    "detector a string": _set("detector", "detector"),
    "detector unknown": _set("detector.name", "retinaface"),
    "detector dir missing": _set("detector.dir", ...),
    "targets null": _set("targets", None),
    "preset missing": _set("preset", ...),
    "recipe a string": _set("recipe", "fast"),
    "recipe retries -1": _set("recipe.retries", -1),
    "opset a string": _set("opset", "17"),
    "versions a list": _set("versions", ["1"]),
    "format_version a string": _set("format_version", "1"),
    "format_version true": _set("format_version", True),
    "format missing": _set("format", ...),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_one_model_error(fake, case):
    put(fake, MALFORMED[case](raw(fake)))
    with pytest.raises(ModelError) as err:
        Bundle.load(fake)
    assert "\n" not in str(err.value) and str(fake) in str(err.value)


PRESETS = {
    "not JSON": b"{steps: 8",
    "a list": b"[]",
    "null": b"null",
    "unknown field": b'{"steps": 8, "stepz": 9}',
    "steps 0": b'{"steps": 0}',
    "steps a string": b'{"steps": "8"}',
    "steps a float": b'{"steps": 8.5}',
    "eps too large": b'{"eps": 1000}',
    "alpha NaN": b'{"alpha": NaN}',
    "norm unknown": b'{"norm": "l3"}',
    "keep_best a string": b'{"keep_best": "no"}',
    "diversity a list": b'{"diversity": [1, 2]}',
    "diversity unknown field": b'{"diversity": {"max_rotation_deg": 6, "spin": 1}}',
    "rescore_every 0": b'{"rescore_every": 0}',
    "feature_dropout 0.9": b'{"feature_dropout": 0.9}',
    "not UTF-8": b'\xff\xfe{',
}


@pytest.mark.parametrize("case", sorted(PRESETS))
def test_an_invalid_preset_is_one_model_error(fake, case):
    (fake / "preset.json").write_bytes(PRESETS[case])
    rehash(fake, "preset.json")  # the hash is right; the content is what is wrong
    with pytest.raises(ModelError, match="preset") as err:
        Bundle.load(fake)
    assert "\n" not in str(err.value)


def test_targets_that_do_not_fit_the_manifest_are_refused(fake):
    TargetBank(["t0"], {"m": np.ones((1, 5), np.float32)}).save(fake / "targets.npz")
    rehash(fake, "targets.npz")
    with pytest.raises(ModelError, match="target embeddings have shape"):
        Bundle.load(fake)
    (fake / "targets.npz").write_bytes(b"PK not a zip")
    rehash(fake, "targets.npz")
    with pytest.raises(ModelError, match="unreadable targets"):
        Bundle.load(fake)


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    bad = BundleManifest(num_targets=1, files={}, surrogates=[
        SurrogateEntry("m", 112, 1.0, 4, 1, "../m.grad.onnx", "m.embed.onnx")])
    with pytest.raises(ModelError, match="relative path"):
        bad.write(tmp_path)
    assert not (tmp_path / MANIFEST).exists()


# -- property: any manifest is loaded or refused with ModelError, never opened outside -------------

_OPENED: list[str] = []
_WATCH: list[tuple[str, str]] = []  # (bundle root, folder it lives in) while a fuzz example runs
_HOOKED: list = []


def _audit(event: str, args) -> None:
    # An audit hook sees every open() of this process (numpy's included): the fuzz test records the
    # ones inside its scratch folder but outside the bundle. Hooks cannot be removed, so it is
    # installed once, by the fuzz fixture, and only records while _WATCH is set.
    if event != "open" or not _WATCH or isinstance(args[0], int) or args[0] is None:
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    root, scratch = _WATCH[0]
    if path.startswith(scratch + os.sep) and not path.startswith(root + os.sep):
        _OPENED.append(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
# paths that reach the secret file outside the bundle (SCRATCH: the folder both live in)
# (escape and surrogates/up are symlinked folders leading there: only the resolved-path check stops those)
escapes = st.sampled_from(["../outside/secret.onnx", "surrogates/../../outside/secret.onnx", "escape/secret.onnx",
                           "surrogates/up/secret.onnx", "SCRATCH/outside/secret.onnx", "./escape/secret.onnx"])
hostile_paths = escapes | st.sampled_from([
    "/etc/passwd", "./targets.npz", "surrogates//m.grad.onnx", "surrogates\\m.grad.onnx", "targets.npz\x00", "",
    ".", "..", "surrogates", "manifest.json", "detector/pnet.onnx", "x" * 5000,
]) | st.text(max_size=30)


def _locations(node, prefix=()):
    """Every (path of keys) in a JSON tree, the root's children first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _locations(child, prefix + (key,))


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory):
    if _audit not in _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(_audit)
    scratch = tmp_path_factory.mktemp("fuzz")
    (scratch / "outside").mkdir()
    (scratch / "outside" / "secret.onnx").write_bytes(SECRET)
    root = make_fake_bundle(scratch / "bundle")
    (root / "escape").symlink_to(scratch / "outside")  # symlinked folders that lead outside
    (root / "surrogates" / "up").symlink_to("../../outside")
    _WATCH.append((os.path.realpath(root), os.path.realpath(scratch)))
    try:  # the hook does see an open outside the bundle
        (root / "escape" / "secret.onnx").read_bytes()
        assert _OPENED == [os.path.realpath(scratch / "outside" / "secret.onnx")]
    finally:
        _WATCH.clear()
        _OPENED.clear()
    return root, raw(root)


# where the manifest names files (a graph, the targets, the preset, the detector folder)
PATH_FIELDS = [("surrogates", 0, "grad_graph"), ("surrogates", 0, "embed_graph"), ("surrogates", 0, "extra", "torch"),
               ("targets",), ("preset",), ("detector", "dir")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_manifest_loads_or_is_refused_and_nothing_outside_is_opened(fuzz_bundle, data):
    root, valid = fuzz_bundle
    scratch = root.parent
    manifest = copy.deepcopy(valid)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        spots = list(_locations(manifest)) if isinstance(manifest, (dict, list)) else []
        action = data.draw(st.sampled_from(["value", "drop", "path", "attack", "attack", "rename", "whole"]),
                           label="action")
        if not spots or action == "whole":
            manifest = data.draw(json_values, label="whole manifest")
            continue
        path = data.draw(escapes if action == "attack" else hostile_paths, label="path")
        path = path.replace("SCRATCH", str(scratch))
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if action == "attack":  # a hostile file where the runtime opens one, maybe listed with its real hash
            *parents, last = data.draw(st.sampled_from(PATH_FIELDS), label="field")
            node = manifest
            try:
                for p in parents:
                    node = node[p]
                node[last] = path
            except (KeyError, IndexError, TypeError):
                pass  # an earlier mutation removed the field
            if isinstance(files, dict) and data.draw(st.booleans(), label="listed"):
                files[path] = SECRET_SHA
            continue
        if action == "rename" and isinstance(files, dict) and files:  # a listed file renamed to a hostile path
            old = data.draw(st.sampled_from(sorted(files, key=str)), label="renamed")
            files[path] = files.pop(old)
            continue
        *parents, last = data.draw(st.sampled_from(spots), label="where")
        node = manifest
        for p in parents:
            node = node[p]
        if action == "drop":
            del node[last]
        elif action == "path":
            node[last] = path
        else:
            node[last] = data.draw(json_values, label="value")
    put(root, json.dumps(manifest))
    _OPENED.clear()
    _WATCH.append((os.path.realpath(root), os.path.realpath(scratch)))
    try:
        bundle = Bundle.load(root)
    except ModelError as exc:
        assert "\n" not in str(exc)
    else:  # what the engines open later (graphs, detector) is hashed and inside the bundle too
        listed = bundle.manifest.files
        later = [p for s in bundle.surrogates for p in (s.grad_graph, s.embed_graph, *s.extra.values())]
        later += [bundle.detector_dir / name for name in ("pnet.onnx", "rnet.onnx", "onet.onnx")]
        for path in later:
            assert path.resolve().is_relative_to(root.resolve()) and path.relative_to(root).as_posix() in listed
    finally:
        _WATCH.clear()
    assert not _OPENED, f"opened outside the bundle: {_OPENED}"


@settings(max_examples=300, deadline=None)
@given(settings_json=st.dictionaries(
    st.sampled_from(["eps", "steps", "alpha", "mu", "norm", "eps_l2", "diversity", "seed", "gamma", "mmd_batch",
                     "keep_best", "stop_margin", "rescore_every", "settle_after", "other"]),
    json_values, max_size=4) | json_values)
def test_any_preset_json_is_a_config_or_a_model_error(settings_json):
    try:
        config = preset_from_json(json.dumps(settings_json).encode())
    except ModelError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, TIPIMConfig)


# -- the preset a bundle carries (real bundles) ------------------------------------------------------

@pytest.fixture(scope="module")
def fast_bundle() -> Bundle:
    """The fast preset's cached bundle (exported into the model cache on first use)."""
    from edgecloak.recipe import bundle_for, resolve

    return bundle_for(resolve("fast"))


def test_a_preset_bundle_holds_the_preset_and_is_reused(fast_bundle):
    from edgecloak.presets import preset
    from edgecloak.recipe import bundle_for, resolve

    fast = preset("fast")
    assert fast_bundle.root.name == "fast-mobileface-k10"  # fast and edge share mobileface, not settings
    assert fast_bundle.preset == TIPIMConfig(**fast.settings) and fast_bundle.preset.steps == fast.settings["steps"]
    assert fast_bundle.recipe == RecipeEntry("fast", fast.retries)
    stamp = (fast_bundle.root / MANIFEST).stat().st_mtime_ns
    assert bundle_for(resolve("fast", settings={"steps": 20})).root == fast_bundle.root  # overrides run, not stored
    assert (fast_bundle.root / MANIFEST).stat().st_mtime_ns == stamp  # current: not exported again


def test_cloaker_on_a_preset_uses_its_bundle(fast_bundle):
    from edgecloak.cloaker import Cloaker

    from edgecloak.presets import preset

    cloaker = Cloaker.load(preset="fast", backend="onnxruntime")
    assert cloaker.protector.bundle.root == fast_bundle.root
    assert cloaker.config.steps == preset("fast").settings["steps"]


def test_a_bundle_given_without_a_policy_brings_its_retries(fast_bundle, tmp_path):
    from edgecloak.cloaker import Cloaker, SafetyPolicy

    bundle = tmp_path / "bundle"
    shutil.copytree(fast_bundle.root, bundle)
    m = raw(bundle)
    m["recipe"]["retries"] = 3
    put(bundle, m)
    assert Cloaker.load(bundle=bundle, backend="onnxruntime").policy.retries == 3
    assert Cloaker.load(bundle=bundle, backend="onnxruntime", policy=SafetyPolicy(retries=0)).policy.retries == 0
    del m["recipe"]  # a bundle from before recipes were recorded: the default policy
    put(bundle, m)
    assert Cloaker.load(bundle=bundle, backend="onnxruntime").policy == SafetyPolicy()


# -- the CLI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["dotdot", "empty list", "bad preset", "no manifest"])
def test_protect_with_a_bad_bundle_exits_7_with_one_line(fake, tmp_path, capsys, case):
    from edgecloak.cli.main import main

    if case == "dotdot":
        m = raw(fake)
        m["surrogates"][0]["grad_graph"] = "../outside/secret.onnx"
        put(fake, m)
    elif case == "empty list":
        put(fake, [])
    elif case == "bad preset":
        (fake / "preset.json").write_text('{"steps": "lots"}')
        rehash(fake, "preset.json")
    else:
        (fake / MANIFEST).unlink()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"never read: the bundle is refused first")
    code = main(["protect", str(photo), "-o", str(tmp_path / "out"), "--bundle", str(fake)])
    err = capsys.readouterr().err
    assert code == 7
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgecloak: error: ") and str(fake) in err
    assert not (tmp_path / "out").exists()  # refused before anything was made
