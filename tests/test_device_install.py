"""A device install (the base package: no torch, no onnx) protects photos from a verified bundle.

The device is played by a fresh interpreter whose import system refuses torch, onnx and
onnxscript (what the export extra adds), with its own ``EDGECLOAK_HOME``. It runs the CLI's
``main`` in-process and then lists what ended up in ``sys.modules`` of torch, onnx, onnxscript and
the export code (``edgecloak.export`` and its submodules), so a protect path that imports export
code fails the tests (``test_the_device_check_sees_export_code`` shows the list is not vacuous).
The bundle in its cache is made the workstation way, ``edgecloak export --preset fast``, which
also shows that the bundle records the preset it was made for. ``scripts/device_install_check.sh``
does the same in a real venv with ``pip install .``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgecloak.presets import preset
from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.bundle_cache import cached_bundle_path

# Runs `edgecloak ARGS...` (the CLI's main, in-process) with the export extra's modules
# unimportable, then prints, as JSON, every module of torch, onnx, onnxscript or the export code
# (edgecloak.export, edgecloak.export.*) that is in sys.modules afterwards. ``{preamble}``: code run
# first (the tests use it to play a regression).
DEVICE = textwrap.dedent("""
    import json
    import sys

    class NoExportExtra:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, NoExportExtra())
    {preamble}
    from edgecloak.cli.main import main

    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules
                    if m.split(".")[0] in ("torch", "onnx", "onnxscript")
                    or m == "edgecloak.export" or m.startswith("edgecloak.export."))
    print("device-modules:", json.dumps(loaded))
    sys.exit(code)
""")
EXTRA = ("torch", "onnx", "onnxscript")


def on_device(home: Path, *args: str, preamble: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLOAK_HOME": str(home)}
    code = DEVICE.format(preamble=preamble or "pass")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env)


def device_modules(done: subprocess.CompletedProcess) -> list[str]:
    """The torch/onnx/export modules the device run had loaded when ``main`` returned."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("device-modules: ")]
    assert len(lines) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[0][len("device-modules: "):])


@pytest.fixture(scope="module")
def device_home(tmp_path_factory) -> Path:
    """A device's cache holding the fast preset's bundle, exported by `edgecloak export --preset fast`."""
    home = tmp_path_factory.mktemp("device-home")
    fast = preset("fast")
    folder = home / "bundles" / cached_bundle_path(list(fast.surrogates), fast.num_targets, "fast").name
    done = subprocess.run([sys.executable, "-m", "edgecloak.cli.main", "export", "--preset", "fast", "-o", str(folder)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "preset fast" in done.stdout
    return home


def test_export_records_the_preset_and_its_settings(device_home):
    fast = preset("fast")
    (folder,) = (device_home / "bundles").iterdir()
    assert folder.name == "fast-mobileface-k10"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"] == {"name": "fast", "retries": fast.retries}
    bundle = Bundle.load(folder)
    assert bundle.preset.steps == fast.settings["steps"] and bundle.preset.alpha == fast.settings["alpha"]


@pytest.fixture(scope="module")
def device_protect(device_home, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`edgecloak protect --preset fast` on the device, from the cached bundle; the run and its output folder."""
    out = tmp_path_factory.mktemp("device-out")
    # --on-fail keep: this is about what runs where, not about how strong the preset is
    done = on_device(device_home, "protect", str(sample_photo()), "-o", str(out), "--preset", "fast",
                     "--on-fail", "keep")
    return done, out


def test_a_device_protects_from_the_cached_bundle_without_torch_or_onnx(device_protect):
    """Defect: the old check looked for torch/onnx in sys.modules, which the import blocker keeps out
    whatever the code does, and never looked for the export code the docstring promised."""
    done, out = device_protect
    assert done.returncode == 0, done.stderr[-2000:]
    assert "backend: onnxruntime" in done.stdout
    loaded = device_modules(done)
    assert not [m for m in loaded if m.split(".")[0] in EXTRA], loaded
    assert not [m for m in loaded if m.startswith("edgecloak.export.")], loaded  # no export module ran to its end
    png = out / f"{sample_photo().stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_device_never_imports_the_export_package(device_protect):
    done, _ = device_protect
    assert done.returncode == 0, done.stderr[-2000:]
    assert "edgecloak.export" not in device_modules(done)


def test_the_device_check_sees_export_code(tmp_path):
    """The module list is not vacuous: export code imported on the way (played by a preamble) shows up in it."""
    done = on_device(tmp_path / "empty-home", "protect", str(sample_photo()), "-o", str(tmp_path / "out"),
                     "--preset", "fast", preamble="import edgecloak.export.zoo.registry")
    assert done.returncode == 7, done.stderr[-2000:]
    assert "edgecloak.export.zoo.registry" in device_modules(done)


def test_a_device_runs_a_bundle_with_the_settings_it_was_exported_for(device_home, tmp_path):
    (folder,) = (device_home / "bundles").iterdir()
    done = on_device(tmp_path / "empty-home", "protect", str(sample_photo()), "-o", str(tmp_path / "out"),
                     "--bundle", str(folder), "--on-fail", "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [int(s) for s in re.findall(r" steps=(\d+)", done.stdout)]
    # the fast preset's N steps, plus 2N when the self-check retries (never the 50 of TIPIMConfig())
    n = preset("fast").settings["steps"]
    assert n != 50 and steps and all(s in (n, 3 * n) for s in steps), done.stdout


def test_a_device_without_a_cached_bundle_says_how_to_get_one(tmp_path):
    done = on_device(tmp_path / "empty-home", "protect", str(sample_photo()), "-o", str(tmp_path / "out"),
                     "--preset", "fast")
    assert done.returncode == 7, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("edgecloak: error: no cloak bundle for preset fast")
    assert str(tmp_path / "empty-home" / "bundles") in lines[0]
    assert "edgecloak export --preset fast -o DIR" in lines[0] and "pip install 'edgecloak[export]'" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_device_refuses_a_damaged_cached_bundle_in_one_line(device_home, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(device_home, home)
    (folder,) = (home / "bundles").iterdir()
    (folder / "preset.json").write_text('{"steps": 1000}')
    done = on_device(home, "protect", str(sample_photo()), "-o", str(tmp_path / "out"), "--preset", "fast")
    assert done.returncode == 7
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "preset.json does not match its manifest" in lines[0]
    assert "edgecloak export --preset fast" in lines[0]


def test_a_renamed_or_swapped_cached_bundle_is_refused(device_home, tmp_path, monkeypatch):
    """Defect: a cached bundle was used whatever its manifest said, so a folder renamed (or swapped)
    to another preset's, surrogates' or K's name ran the settings it was exported for under that name."""
    import shutil

    from edgecloak.errors import ModelError
    from edgecloak.runtime.bundle_cache import load_cached_bundle

    (fast,) = (device_home / "bundles").iterdir()  # fast-mobileface-k10: preset fast, mobileface, K 10
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path))
    shutil.copytree(fast, tmp_path / "bundles" / fast.name)
    assert load_cached_bundle(["mobileface"], 10, "fast").recipe.name == "fast"  # the name it was made for
    cases = [  # (the name it is given, what is asked, what the error says, the export command it suggests)
        ("edge-mobileface-k10", (["mobileface"], 10, "edge"), "preset fast where the name says edge",
         "edgecloak export --preset edge -o DIR"),
        ("fast-mobileface-k4", (["mobileface"], 4, "fast"), "K 10 where the name says 4",
         "edgecloak export --preset fast -o DIR"),
        ("fast-faceres-k10", (["faceres"], 10, "fast"), "surrogates mobileface where the name says faceres",
         "edgecloak export --preset fast --surrogates faceres -o DIR"),
        ("mobileface-k10", (["mobileface"], 10, None), "preset fast where the name says (none)",
         "edgecloak export --surrogates mobileface -k 10 -o DIR"),
    ]
    for name, (surrogates, k, preset_name), why, command in cases:
        shutil.copytree(fast, tmp_path / "bundles" / name)
        with pytest.raises(ModelError) as err:
            load_cached_bundle(surrogates, k, preset_name, custom_surrogates=surrogates != ["mobileface"])
        message = str(err.value)
        assert "\n" not in message and "does not match its folder name" in message, message
        assert why in message and str(tmp_path / "bundles" / name) in message and command in message, message


def test_a_device_refuses_a_bundle_swapped_in_for_another_preset(device_home, tmp_path):
    """The fast preset's bundle under the edge preset's name: one line and exit 7, not 8 steps run as "edge"."""
    import shutil

    (fast,) = (device_home / "bundles").iterdir()
    home = tmp_path / "home"
    shutil.copytree(fast, home / "bundles" / "edge-mobileface-k10")
    done = on_device(home, "protect", str(sample_photo()), "-o", str(tmp_path / "out"), "--preset", "edge")
    assert done.returncode == 7, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecloak: error: no cloak bundle for preset edge"), lines
    assert "preset fast where the name says edge" in lines[0] and "edgecloak export --preset edge -o DIR" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
