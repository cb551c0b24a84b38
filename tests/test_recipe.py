"""One recipe: every entry point resolves presets and bundles through ``edgecloak.recipe.resolve``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from edgecloak.cli.main import main
from edgecloak.cli.settings import (add_policy_arguments, add_recipe_arguments, add_settings_arguments, recipe_from,
                                    settings_from)
from edgecloak.errors import ModelError, UsageError
from edgecloak.policy import DEFAULT_RETRIES, SafetyPolicy
from edgecloak.presets import DEFAULT_PRESET, preset, preset_names
from edgecloak.recipe import Recipe, bundle_for, resolve
from edgecloak.runtime.bundle import RecipeEntry
from edgecloak.runtime.config import TIPIMConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    add_settings_arguments(parser)
    add_policy_arguments(parser)
    return parser


def test_a_preset_resolves_to_its_data_and_the_defaults_of_everything_else():
    for name in preset_names():
        stored = preset(name)
        recipe = resolve(name)
        assert recipe.surrogates == stored.surrogates and recipe.num_targets == stored.num_targets
        assert recipe.config == TIPIMConfig(**stored.settings)
        assert recipe.policy == SafetyPolicy(retries=stored.retries)
        assert recipe.entry == RecipeEntry(name, stored.retries) and recipe.bundle is None
    assert resolve().preset == DEFAULT_PRESET


def test_overrides_replace_only_what_they_name():
    recipe = resolve("fast", surrogates=["mobileface", "faceres"], num_targets=4,
                     settings={"steps": 3, "diversity": None}, policy={"on_fail": "keep", "retries": None})
    assert recipe.surrogates == ("mobileface", "faceres") and recipe.num_targets == 4
    assert (recipe.config.steps, recipe.config.alpha, recipe.config.diversity) == (3, 2.0, None)
    assert recipe.policy == SafetyPolicy(on_fail="keep", retries=preset("fast").retries)  # None: keep the preset's
    assert recipe.settings == {**preset("fast").settings, "steps": 3, "diversity": None}
    whole = SafetyPolicy(retries=0, min_face=10)
    assert resolve("fast", policy=whole).policy is whole


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "nonsense"}, "unknown preset 'nonsense'; choose one of"),
    ({"settings": {"stpes": 3}}, "unknown TIP-IM setting 'stpes'"),
    ({"settings": {"eps": 0}}, "eps must be in"),
    ({"settings": {"steps": 0}}, "steps must be >= 1"),
    ({"settings": {"eps": float("nan")}}, "finite"),
    ({"num_targets": 0}, "number of targets must be >= 1"),
    ({"surrogates": [""]}, "surrogates must be recognizer names"),
    ({"policy": {"on_fail": "shrug"}}, "unknown --on-fail"),
    ({"policy": {"retry": 2}}, "unknown self-check setting 'retry'"),
])
def test_bad_input_is_one_usage_error_line(kwargs, message):
    with pytest.raises(UsageError, match=message) as caught:
        resolve(**kwargs)
    assert "\n" not in str(caught.value)


def test_a_bundle_brings_its_own_surrogates_k_settings_and_retries(tmp_path):
    edge = bundle_for(resolve("edge"))
    recipe = resolve(bundle=edge.root, settings={"steps": 5})
    assert recipe.bundle == edge.root and recipe.entry == edge.recipe and recipe.preset == "edge"
    assert recipe.surrogates == tuple(s.id for s in edge.manifest.surrogates) and recipe.num_targets == edge.num_targets
    assert recipe.config == dataclasses.replace(edge.preset, steps=5)
    assert recipe.policy.retries == edge.recipe.retries
    for kwargs in ({"preset": "fast"}, {"surrogates": ["faceres"]}, {"num_targets": 3}):
        with pytest.raises(UsageError):
            resolve(bundle=edge.root, **kwargs)
    # the bundle's stored settings are checked against its manifest's hash before they are used
    copy = tmp_path / "copy"
    shutil.copytree(edge.root, copy)
    (copy / "preset.json").write_text(json.dumps({"steps": 99}))
    with pytest.raises(ModelError, match="preset.json does not match its manifest"):
        resolve(bundle=copy)


def test_the_cached_bundle_stores_the_preset_not_the_overrides():
    plain = bundle_for(resolve("edge"))
    overridden = bundle_for(resolve("edge", settings={"steps": 3}, policy={"retries": 4}))
    assert overridden.root == plain.root and overridden.manifest.files == plain.manifest.files
    assert plain.preset == TIPIMConfig(**preset("edge").settings)


def test_every_setting_flag_comes_from_the_config_fields():
    """A new TIPIMConfig field is written once: with ``cli_help`` metadata it is a flag of every
    subcommand that takes settings, parsed to its type, and reaches the recipe."""
    flagged = [f for f in dataclasses.fields(TIPIMConfig) if "cli_help" in f.metadata]
    assert {f.name for f in flagged} >= {"eps", "steps", "alpha", "mu", "norm", "diversity", "seed", "gamma",
                                         "stop_margin", "rescore_every", "settle_after"}
    parser = _parser()
    args = parser.parse_args(["--eps", "8", "--steps", "3", "--norm", "l2", "--no-diversity", "--stop-margin", "0.2",
                              "--settle-after", "2", "--rescore-every", "4"])
    assert settings_from(args) == {"eps": 8.0, "steps": 3, "norm": "l2", "diversity": None, "stop_margin": 0.2,
                                   "rescore_every": 4, "settle_after": 2}
    recipe = recipe_from(args)
    assert (recipe.config.eps, recipe.config.norm, recipe.config.settle_after) == (8.0, "l2", 2)
    assert settings_from(parser.parse_args([])) == {}  # nothing typed: nothing overridden
    with pytest.raises(SystemExit):
        parser.parse_args(["--norm", "l3"])
    for command in ("protect", "batch", "run", "export"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0


def test_recipe_from_flags_matches_resolve(tmp_path):
    args = _parser().parse_args(["--preset", "fast", "--steps", "4", "--on-fail", "keep", "--min-face", "20"])
    assert recipe_from(args) == resolve("fast", settings={"steps": 4},
                                        policy=SafetyPolicy(on_fail="keep", min_face=20, retries=DEFAULT_RETRIES))
    assert isinstance(recipe_from(_parser().parse_args([]), default_preset="fast"), Recipe)
    assert recipe_from(_parser().parse_args([]), default_preset="fast").preset == "fast"


@pytest.mark.parametrize("argv", [["--preset", "nonsense"], ["--steps", "0"], ["--preset", "fast", "--eps", "-1"]])
def test_protect_refuses_a_bad_recipe_in_one_line_before_any_work(tmp_path, capsys, argv):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"never read")
    code = main(["protect", str(photo), "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("edgecloak: error: ")
    assert not (tmp_path / "out").exists()


def test_the_face_seam_is_typed(tmp_path):
    """One geometry per face, and a typed result per pass: box, protected pixels, target, steps, timings."""
    from edgecloak.cloaker import Cloaker
    from edgecloak.export.zoo.photos import sample_photo
    from edgecloak.runtime.face_region import FaceRegion
    from edgecloak.runtime.image_io import load_image
    from edgecloak.runtime.protector import FaceResult

    cloaker = Cloaker.load(preset="edge", backend="onnxruntime", steps=3)
    protector = cloaker.protector
    image = load_image(sample_photo())
    face = cloaker.detector.detect(image)[0]
    region = protector.face_region(face.landmarks, image.shape[:2])
    assert isinstance(region, FaceRegion)
    user = protector.embed_face(image, region)
    assert all(np.array_equal(user[k], v) for k, v in protector.embed_face(image, face.landmarks).items())
    targets = protector.targets.excluding_lookalikes(user).select([0, 1, 2])
    done = protector.protect_face(image, image, region, targets, steps=2)
    assert isinstance(done, FaceResult) and done.box == tuple(region.box)
    x0, y0, x1, y1 = done.box
    assert done.region.shape == (y1 - y0, x1 - x0, 3) and done.region.dtype == np.uint8
    assert 0 <= done.target_index < 3 and done.steps == len(done.gains) == 2
    assert set(done.seconds) >= {"graphs", "warp", "other"}
    change = np.abs(done.region.astype(int) - image[y0:y1, x0:x1].astype(int))
    assert 0 < change.max() <= int(cloaker.config.eps)
    pasted = image.copy()
    done.paste_into(pasted)
    assert np.array_equal(pasted[y0:y1, x0:x1], done.region)
    assert not hasattr(protector, "last_result")  # no side channel
