"""Per-user cloak profiles: enrolment, storage (hashes, owner-only files), protect from a profile,
and the evaluation's held-out rule. Real photos, the real detector and the edge preset's real bundle."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import numpy as np
import pytest

from edgecloak.errors import ModelError, UsageError
from edgecloak.runtime.profile import CANONICAL, from_canonical, list_profiles, load_profile, remove_profile, \
    save_profile, to_canonical


@pytest.fixture(scope="module")
def cloaker():
    from edgecloak import Cloaker
    from edgecloak.policy import SafetyPolicy

    # photos with a second, tiny face in the background: kept as they are, judged face by face here
    return Cloaker.load(preset="edge", backend="onnxruntime", policy=SafetyPolicy(on_fail="keep"))


@pytest.fixture(scope="module")
def people():
    """(owner's photos, another person's photo) as RGB arrays: two identities of the photo set."""
    from edgecloak.export.zoo.photos import identity_photos
    from edgecloak.runtime.image_io import load_image

    photos = identity_photos()
    names = sorted(photos)
    return [load_image(p) for p in photos[names[0]][:3]], load_image(photos[names[1]][0])


@pytest.fixture(scope="module")
def profile(cloaker, people):
    owner, _ = people
    return cloaker.enroll(owner, "owner", save=False, passes=2, steps=4)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Profiles go to a home of the test's own (the cloaker's bundle was loaded from the real cache)."""
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_canonical_warps_are_inverse_where_the_region_reaches():
    landmarks = CANONICAL.template() + 40.0
    box = (0, 0, 320, 320)
    rng = np.random.default_rng(0)
    mask = rng.uniform(-12, 12, (CANONICAL.size, CANONICAL.size, 3)).astype(np.float32)
    there = from_canonical(mask, landmarks, box)
    assert there.shape == (320, 320, 3)
    np.testing.assert_allclose(there[40:40 + 224, 40:40 + 224], mask, atol=1e-4)  # a pure shift here
    back = to_canonical(there, landmarks, box)
    np.testing.assert_allclose(back, mask, atol=1e-4)


def test_enrolment_makes_masks_within_eps_each_towards_its_own_target(profile, cloaker):
    from edgecloak.enrolment import PROFILE_MASKS

    assert profile.photos == 3 and profile.surrogates == ("mobileface",)
    assert len(profile.targets) == PROFILE_MASKS == len(set(profile.targets))
    assert set(profile.targets) <= set(cloaker.targets.identities)
    assert profile.masks.dtype == np.int8 and profile.masks.shape == (PROFILE_MASKS, CANONICAL.size, CANONICAL.size, 3)
    for mask in profile.masks:
        assert 0 < np.abs(mask).max() <= np.floor(cloaker.config.eps)
    assert not np.array_equal(profile.masks[0], profile.masks[1])
    template = profile.template["mobileface"]
    assert template.shape == (1, 256) and abs(float(np.linalg.norm(template)) - 1.0) < 1e-5


def test_profile_round_trip_is_private_listed_and_removed_for_good(profile, home):
    folder = save_profile(profile)
    assert folder == home / "profiles" / "owner"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {
        "profile.npz": 0o600, "profile.json": 0o600}
    again = load_profile("owner")
    assert np.array_equal(again.masks, profile.masks) and again.targets == profile.targets
    assert np.array_equal(again.template["mobileface"], profile.template["mobileface"])
    assert [row["name"] for row in list_profiles()] == ["owner"]
    with pytest.raises(UsageError, match="exists"):
        save_profile(profile)  # never replaced silently
    remove_profile("owner")
    assert not folder.exists() and list_profiles() == []
    with pytest.raises(ModelError, match="no cloak profile"):
        load_profile("owner")
    with pytest.raises(UsageError, match="no cloak profile"):
        remove_profile("owner")


def test_a_changed_profile_is_refused(profile, home):
    folder = save_profile(profile)
    data = bytearray((folder / "profile.npz").read_bytes())
    data[-100] ^= 0x01
    (folder / "profile.npz").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256"):
        load_profile("owner")
    listed = list_profiles()
    assert listed[0]["name"] == "owner" and "sha256" in listed[0]["error"]


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b", "x" * 65])
def test_profile_names_are_plain(profile, home, bad):
    from dataclasses import replace

    with pytest.raises(UsageError, match="profile name"):
        save_profile(replace(profile, name=bad))


@pytest.mark.parametrize("steps", [0, 2])
def test_the_owner_starts_from_the_profile_and_others_do_not(cloaker, profile, people, steps):
    owner, other = people
    cloaker.use_profile(profile, steps=steps)
    try:
        result = cloaker.protect(owner[0])
        face = max(result.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        assert face.profile_started and face.target in profile.targets
        # the self-check and its retries still hold the face to the same bar
        assert face.action == "cloaked" and face.steps >= steps
        assert 0 < result.mask_max_abs_change <= np.floor(cloaker.config.eps)
        stranger = cloaker.protect(other)
        assert not any(f.profile_started for f in stranger.faces)
        assert all(f.steps >= cloaker.config.steps for f in stranger.faces if f.action == "cloaked")
    finally:
        cloaker.use_profile(None)


def test_each_photo_draws_its_mask_and_the_same_photo_the_same_one(profile):
    keys = [i.to_bytes(2, "little") for i in range(300)]
    picks = [profile.pick(profile.targets, 0, key) for key in keys]
    assert picks == [profile.pick(profile.targets, 0, key) for key in keys]  # reproducible per photo
    counts = np.bincount(picks, minlength=len(profile.targets))
    assert counts.min() >= 60, counts  # ~100 each: every mask is drawn, none dominates
    assert picks != [profile.pick(profile.targets, 1, key) for key in keys]  # the seed matters
    only = profile.targets[1]
    assert {profile.pick([only, "someone-else"], 0, key) for key in keys} == {1}  # only masks whose target is here
    assert profile.pick(["someone-else"], 0, keys[0]) is None


def test_batch_workers_run_the_profile_the_driver_read(profile, home):
    from dataclasses import replace

    from edgecloak.batch.worker import PhotoWorker, WorkerSpec, resolved, spec_key

    save_profile(profile)
    spec = resolved(WorkerSpec(preset="edge", profile="owner", profile_steps=0))
    assert spec.profile_sha256 == load_profile("owner").sha256
    # another profile, another key: a library cloaked with it is redone; none: the key of old
    assert spec_key(spec) != spec_key(replace(spec, profile_sha256="0" * 64)) != spec_key(replace(spec, profile=None))
    with pytest.raises(UsageError, match="not the one the batch was started with"):
        PhotoWorker(replace(spec, profile_sha256="0" * 64))
    with pytest.raises(ModelError, match="no cloak profile"):
        resolved(WorkerSpec(preset="edge", profile="nobody"))


def test_a_profile_of_other_surrogates_is_refused(cloaker, profile):
    from dataclasses import replace

    with pytest.raises(UsageError, match="enrolled on"):
        cloaker.use_profile(replace(profile, surrogates=("faceres",)))
    with pytest.raises(UsageError, match=">= 0"):
        cloaker.use_profile(profile, steps=-1)


def test_enrolment_needs_two_photos(cloaker, people):
    with pytest.raises(UsageError, match="at least 2"):
        cloaker.enroll(people[0][:1], "owner", save=False)


def test_the_evaluation_never_enrols_on_a_probe():
    from edgecloak.evaluation.harness import evaluation_photos
    from edgecloak.evaluation.protocol import Split, enrolment_photos, split_photos

    users, _ = evaluation_photos(distractors=False)
    split = split_photos(users, 4, 3)
    enrolled = enrolment_photos(split)
    assert set(enrolled) == set(split.probes)
    for user, photos in enrolled.items():
        assert len(photos) == 3 and not set(photos) & set(split.probes[user])
        assert not set(photos) & {p for ps in split.probes.values() for p in ps}
    leaked = Split(split.probes, {**split.optimisation, "x": [split.probes[sorted(users)[0]][0]]}, split.photos)
    with pytest.raises(ValueError, match="is a probe"):
        enrolment_photos(leaked)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloak.cli.main", *args], capture_output=True, text=True, timeout=900)


def test_cli_enrol_list_remove(people, tmp_path):
    """The commands, end to end, in the cache's own profiles folder (the edge bundle is there); the
    profile's name is the test's own and it is removed however the test ends."""
    from edgecloak.runtime.image_io import save_image_atomic
    from edgecloak.runtime.profile import profiles_dir

    name = f"test-{tmp_path.name[-20:]}".replace("_", "-")
    paths = []
    for i, image in enumerate(people[0]):
        paths.append(tmp_path / f"me{i}.png")
        save_image_atomic(paths[-1], image)
    try:
        done = run_cli("enroll", *map(str, paths), "--name", name, "--preset", "edge", "--passes", "1", "--steps", "2",
                       "--masks", "2")
        assert done.returncode == 0, done.stderr
        assert f"profile {name}: 3 photos, targets " in done.stdout
        assert len(load_profile(name).targets) == 2
        listed = run_cli("profiles", "list", "--json")
        assert listed.returncode == 0 and name in [row["name"] for row in json.loads(listed.stdout)]
        gone = run_cli("profiles", "remove", "nobody-here")
        assert gone.returncode == 2 and "Traceback" not in gone.stderr
        assert "no cloak profile named 'nobody-here'" in gone.stderr
        bad = run_cli("enroll", str(paths[0]), str(paths[1]), "--name", "../x")
        assert bad.returncode == 2 and "profile name" in bad.stderr and "Traceback" not in bad.stderr
        assert run_cli("profiles", "remove", name).returncode == 0
        assert not (profiles_dir() / name).exists()
    finally:
        if (profiles_dir() / name).exists():
            remove_profile(name)
