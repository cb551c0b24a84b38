"""A device install (the base package: no torch, no onnx) protects photos from a verified bundle.

The device is played by a fresh interpreter whose import system refuses torch, onnx and
onnxscript (what the export extra adds), with its own ``EDGECLOAK_HOME``. The bundle in its cache
is made the workstation way, ``edgecloak export --preset fast``, which also shows that the
bundle records the preset it was made for. ``scripts/device_install_check.sh`` does the same in a
real venv with ``pip install .``.
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

from edgecloak.calibration.presets import preset
from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.bundle_cache import cached_bundle_path

# Runs `edgecloak ARGS...` with the export extra's modules unimportable, then says whether any
# of them (or the export code) was imported after all.
DEVICE = textwrap.dedent("""
    import sys

    class NoExportExtra:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoExportExtra())
    from edgecloak.cli.main import main

    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript"))
    print("device-imports:", ",".join(loaded) or "none")
    sys.exit(code)
""")


def on_device(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLOAK_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", DEVICE, *args], capture_output=True, text=True, timeout=600, env=env)


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
    assert bundle.preset.steps == fast.settings["steps"] == 8 and bundle.preset.alpha == fast.settings["alpha"]


def test_a_device_protects_from_the_cached_bundle_without_torch_or_onnx(device_home, tmp_path):
    out = tmp_path / "out"
    # --on-fail keep: this test is about what runs where, not about how strong 8 steps are
    done = on_device(device_home, "protect", str(sample_photo()), "-o", str(out), "--preset", "fast",
                     "--on-fail", "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "device-imports: none" in done.stdout and "backend: onnxruntime" in done.stdout
    png = out / f"{sample_photo().stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_device_runs_a_bundle_with_the_settings_it_was_exported_for(device_home, tmp_path):
    (folder,) = (device_home / "bundles").iterdir()
    done = on_device(tmp_path / "empty-home", "protect", str(sample_photo()), "-o", str(tmp_path / "out"),
                     "--bundle", str(folder), "--on-fail", "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [int(s) for s in re.findall(r" steps=(\d+)", done.stdout)]
    # the fast preset's 8 steps, plus 16 when the self-check retries (never the 50 of TIPIMConfig())
    assert steps and all(s in (8, 24) for s in steps), done.stdout


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
