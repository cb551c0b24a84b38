"""Evaluation metrics on hand-made cases whose answers are known, and the split rule."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecloak.evaluation.metrics import dodging_rate, psnr, rank_metrics, ranked_identities, ssim, threshold_at_far
from edgecloak.evaluation.protocol import split_photos


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# a gallery of three identities, two photos each, in three orthogonal directions (plus a little tilt)
GALLERY = unit([[1, 0.1, 0], [1, 0, 0.1], [0.1, 1, 0], [0, 1, 0.1], [0.1, 0, 1], [0, 0.1, 1]])
LABELS = ["a", "a", "b", "b", "c", "c"]


def test_identities_are_ranked_by_their_best_photo():
    probe = unit([[0.2, 1, 0.5]])  # closest to b, then c, then a
    assert ranked_identities(probe, GALLERY, LABELS) == [["b", "c", "a"]]


def test_rank_metrics_on_a_known_gallery():
    probes = unit([[1, 0, 0.2], [0, 1, 0.2], [0, 0.3, 1]])  # ranks: (a, c, b), (b, c, a), (c, b, a)
    true = ["a", "a", "a"]  # all three probes are photos of a
    targets = [{"b"}, {"b"}, {"b"}]
    m = rank_metrics(probes, true, targets, GALLERY, LABELS, ks=(1, 2, 3))
    assert m["rank1_ut"] == pytest.approx(2 / 3)  # probes 2 and 3 no longer rank a first
    assert m["rank1_t"] == pytest.approx(1 / 3)  # only probe 2 ranks the target b first
    assert m["rank2_t"] == pytest.approx(2 / 3)  # probe 3 has b second (c, b, a)
    assert m["rank3_ut"] == 0.0  # with 3 identities the true one is always in the top 3
    with pytest.raises(ValueError):
        rank_metrics(probes, true[:2], targets, GALLERY, LABELS)


def test_threshold_at_far_lets_through_exactly_that_fraction():
    impostors = np.arange(100) / 100.0
    t = threshold_at_far(impostors, far=0.05)
    assert np.mean(impostors > t) == pytest.approx(0.05)
    assert dodging_rate(np.array([t - 0.1, t, t + 0.1, t + 0.2]), t) == 0.5
    with pytest.raises(ValueError):
        threshold_at_far(impostors, far=0.0)


def test_psnr_and_ssim_on_known_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    brighter = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)
    changed = np.mean(brighter != img)
    assert psnr(img, brighter) == pytest.approx(10 * math.log10(255**2 / changed))
    assert ssim(img, img) == pytest.approx(1.0)
    # flat images: SSIM reduces to the luminance term (2 mx my + C1) / (mx^2 + my^2 + C1)
    a, b = np.full((32, 32), 100, np.uint8), np.full((32, 32), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-9)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8) for s in (2, 8, 32)]
    scores = [ssim(img, n) for n in noisy]
    assert scores[0] > scores[1] > scores[2]


def test_split_is_deterministic_and_keeps_optimisation_photos_out_of_every_gallery():
    photos = {name: [Path(f"{name}/{i:03d}.jpg") for i in range(n)] for name, n in (("a", 9), ("b", 7), ("c", 12))}
    split = split_photos(photos, probes_per_identity=2, targets_per_identity=3)
    shuffled = {name: random.Random(1).sample(paths, len(paths)) for name, paths in photos.items()}
    assert split_photos(shuffled, 2, 3) == split  # the order the files were listed in does not matter
    held_out = {p for paths in split.optimisation.values() for p in paths}
    assert all(len(split.optimisation[n]) == 3 and len(split.probes[n]) == 2 for n in photos)
    for name, probes in split.probes.items():
        assert not set(probes) & held_out
        for probe in probes:
            gallery = split.gallery_for(probe)
            paths = [p for _, p in gallery]
            assert probe not in paths and not set(paths) & held_out
            own = [p for n, p in gallery if n == name]
            assert len(own) == len(photos[name]) - 3 - 1  # the user's other photos are there
    with pytest.raises(ValueError, match="needs at least 6"):
        split_photos({"d": photos["a"][:5]}, 2, 3)


def test_split_of_the_real_identity_photos():
    from edgecloak.export.zoo.photos import identity_photos

    photos = identity_photos()
    split = split_photos(photos)
    assert set(split.probes) == set(photos) and len(photos) == 5
    for name in photos:
        gallery = split.gallery_for(split.probes[name][0])
        assert sum(n == name for n, _ in gallery) >= 1



def test_evaluation_photos_are_ten_users_and_612_gallery_only_faces():
    import hashlib

    from edgecloak.evaluation.harness import evaluation_photos
    from edgecloak.export.zoo.photos import distractor_photos, identity_photos, more_identity_photos

    users, others = evaluation_photos()
    celebrities, more = identity_photos(), more_identity_photos()
    johns = {n: ps for n, ps in more.items() if n.startswith("john_")}
    assert len(celebrities) == 5 and len(johns) == 5
    assert list(users) == sorted(users) and users == {**celebrities, **johns}  # each with its photos, in order
    # the gallery-only identities: Obama, then one portrait per person, in distractor_photos()'s order
    portraits = distractor_photos()
    assert list(others) == ["barack_obama", *(f"portrait-{i:03d}" for i in range(609))]
    assert others["barack_obama"] == more["barack_obama"] and len(others["barack_obama"]) == 3
    assert [ps for n, ps in others.items() if n != "barack_obama"] == [[p] for p in portraits]
    assert len(others) == 610 and sum(len(ps) for ps in others.values()) == 612
    assert not set(users) & set(others)
    assert not any(n.startswith("portrait-") or n == "barack_obama" for n in users)
    # no photo twice, by path or by content, across users and gallery-only identities
    every = [p for group in (users, others) for ps in group.values() for p in ps]
    assert len(every) == 118 + 54 + 612 == len(set(every))
    assert len({hashlib.md5(p.read_bytes()).hexdigest() for p in every}) == len(every)
    # without distractors: the same users, no gallery-only identity
    assert evaluation_photos(False) == (users, {})
    assert evaluation_photos(distractors=False)[1] == {}
    # the default split (4 probes, 3 optimisation photos) fits every user; Obama is too small to be one
    assert min(len(ps) for ps in users.values()) >= 4 + 3 + 1
    split = split_photos(users, 4, 3)
    assert sum(len(ps) for ps in split.probes.values()) == 40 and set(split.probes) == set(users)
    assert all(len(ps) == 3 for ps in split.optimisation.values())
    with pytest.raises(ValueError, match="barack_obama: 3 photos, the split needs at least 8"):
        split_photos({"barack_obama": others["barack_obama"]}, 4, 3)


def test_eval_settings_default_to_the_larger_protocol(tmp_path):
    from edgecloak.evaluation.harness import EvalSettings

    settings = EvalSettings(out=tmp_path)
    assert settings.probes_per_identity == 4 and settings.targets_per_identity == 3 and settings.distractors is True
    assert settings.to_dict()["distractors"] is True  # recorded in results.json


def test_eval_no_distractors_flag_reaches_the_settings(tmp_path, monkeypatch, capsys):
    """`edgecloak eval --no-distractors` runs with EvalSettings(distractors=False); without the flag the
    distractors stay on. The run itself is replaced (only the CLI's settings are under test)."""
    from edgecloak.cli.main import main
    from edgecloak.evaluation import harness, report

    seen, reported = [], []

    def fake_run(settings, *args, **kwargs):
        seen.append(settings)
        return {"fake": len(seen)}

    def fake_write_report(results, out):
        reported.append(results)
        return Path(out) / "report.md"

    monkeypatch.setattr(harness, "run_evaluation", fake_run)
    monkeypatch.setattr(report, "write_report", fake_write_report)
    monkeypatch.setattr(report, "headline_markdown", lambda results: "| headline |")
    out = tmp_path / "out"
    assert main(["eval", "-o", str(out), "--no-distractors"]) == 0
    assert main(["eval", "-o", str(out)]) == 0
    assert main(["eval", "-o", str(out), "--quick", "--no-distractors", "--probes", "2"]) == 0
    assert [s.distractors for s in seen] == [False, True, False]
    assert [s.probes_per_identity for s in seen] == [4, 4, 2]
    assert seen[2].methods == ["none", "noise", "edge"]  # --quick's other settings are kept
    assert all(isinstance(s, harness.EvalSettings) and s.out == out for s in seen)
    assert reported == [{"fake": 1}, {"fake": 2}, {"fake": 3}]  # each run's results were reported
    assert capsys.readouterr().out.count("| headline |") == 3


def test_the_report_describes_the_gallery():
    from edgecloak.evaluation.report import protocol_description

    proto = {"probes": [{}] * 3, "users": ["a", "b", "c"], "gallery_faces": 764,
             "gallery_identities": [*"abcdefghij", *(f"one-{i}" for i in range(10)), "barack_obama",
                                    *(f"portrait-{i:03d}" for i in range(609))],
             "optimisation_photos": {n: ["x.jpg"] * 3 for n in "abcdefghij"}}
    settings = {"probes_per_identity": 1, "targets_per_identity": 3, "distractors": True}
    text = protocol_description({"protocol": proto, "settings": settings})
    assert text.startswith("3 probe photos of 3 of the 10 users (1 each). Gallery: 764 faces of 630 identities")
    assert ("the users' other photos, the 10 one-photo faces and 612 gallery-only faces (3 photos of one more "
            "person and 609 one-photo portraits)") in text
    small = {**proto, "gallery_faces": 152, "gallery_identities": proto["gallery_identities"][:20]}
    text = protocol_description({"protocol": small, "settings": {**settings, "distractors": False}})
    assert "152 faces of 20 identities" in text and "(no gallery-only faces: --no-distractors)" in text
    assert "612" not in text and "portraits" not in text
    old = {k: v for k, v in settings.items() if k != "distractors"}  # results written before the setting
    assert "(no gallery-only faces)" in protocol_description({"protocol": small, "settings": old})

# -- upload transforms and baselines ---------------------------------------------------------------
def test_upload_transforms_change_pixels_as_uploads_do():
    from edgecloak.evaluation.transforms import UPLOAD_TRANSFORMS, apply_transform

    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    for name in UPLOAD_TRANSFORMS:
        out, scale = apply_transform(name, img)
        assert out.dtype == np.uint8 and out.shape[2] == 3
        assert out.shape[:2] == (round(96 * scale), round(128 * scale))
        if name != "none":
            assert not np.array_equal(out, img) if scale == 1.0 else scale == 0.5
    # lower JPEG quality loses more
    errors = [np.abs(apply_transform(f"jpeg{q}", img)[0].astype(int) - img).mean() for q in (90, 75, 50)]
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(ValueError, match="unknown transform"):
        apply_transform("jpeg10", img)


def test_noise_and_blur_baselines_stay_in_the_face_region():
    from edgecloak.evaluation.methods import BlurBaseline, NoiseBaseline, face_region

    img = np.full((200, 300, 3), 128, np.uint8)
    img[::7] = 40  # some texture for the blur to act on
    box = (100.0, 50.0, 180.0, 150.0)
    x0, y0, x1, y1 = face_region(box, img.shape)
    assert (x0, y0, x1, y1) == (80, 25, 200, 175)
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    for method in (NoiseBaseline(eps=12), BlurBaseline(sigma=3)):
        out = method.protect(img, box, "someone", seed=5).image
        assert np.array_equal(out[outside], img[outside])
        assert not np.array_equal(out, img)
    noisy = NoiseBaseline(eps=12).protect(img, box, "someone", seed=5).image
    assert np.abs(noisy.astype(int) - img).max() == 12
    assert np.array_equal(noisy, NoiseBaseline(eps=12).protect(img, box, "x", seed=5).image)  # seeded


# -- a small real run, end to end through the CLI ----------------------------------------------------
QUICK_ARGS = ["--quick", "--identities", "madonna,ben_afflek,mindy_kaling"]


@pytest.fixture(scope="module")
def quick_eval(tmp_path_factory):
    from edgecloak.cli.main import main

    out = tmp_path_factory.mktemp("eval")
    cache = out / "cache"
    assert main(["eval", "-o", str(out), "--cache", str(cache), *QUICK_ARGS]) == 0
    return out, cache


@pytest.mark.slow
def test_quick_real_run_measures_protection(quick_eval):
    out, _ = quick_eval
    results = json.loads((out / "results.json").read_text())
    probes = results["protocol"]["probes"]
    assert len(probes) == 3
    held_out = {p for ps in results["protocol"]["optimisation_photos"].values() for p in ps}
    assert not held_out & {p["photo"] for p in probes}
    # every gallery holds the gallery-only identities too (on by default): 142 users' photos (172 less
    # 10 x 3 optimisation photos), 612 gallery-only faces and the 10 one-photo faces
    proto = results["protocol"]
    assert results["settings"]["distractors"] is True and results["settings"]["probes_per_identity"] == 1
    assert proto["gallery_faces"] >= 700
    assert {"portrait-000", "portrait-608", "barack_obama", "john_simm", "elton_john"} <= set(proto["gallery_identities"])
    assert len(proto["optimisation_photos"]) == 10  # every user is split (and a target), not only the probed 3
    assert "612 gallery-only faces" in (out / "report.md").read_text()
    rows = {(r["method"], r["transform"], r["evaluator"]): r for r in results["rows"]}
    assert len(rows) == 3 * 2 * 2 and all(r["n"] == 3 for r in rows.values())
    assert rows[("edge", "none", "mobileface")]["white_box"] and not rows[("edge", "none", "faceres-deep")]["white_box"]
    # clean photos are recognised; the edge preset moves white-box mobileface off the true identity
    clean = rows[("none", "none", "mobileface")]
    protected = rows[("edge", "none", "mobileface")]
    assert clean["rank1_ut"] <= 1 / 3
    assert protected["rank1_ut"] >= 2 / 3 and protected["rank1_ut"] > clean["rank1_ut"]
    summary = {(s["method"], s["transform"]): s for s in results["summary"]}
    assert summary[("none", "none")]["psnr_face"] is None  # unchanged: infinite PSNR is not averaged
    assert 25 < summary[("noise", "none")]["psnr_face"] < 40
    assert 20 < summary[("edge", "none")]["psnr_face"] < summary[("edge", "none")]["psnr_photo"]
    assert all(r["max_change"] <= 12 for r in results["records"]["edge"])
    assert results["versions"]["onnxruntime"] and results["settings"]["seed"] == 0
    # protection success rates at FAR 1e-3, on thresholds set on enough impostor pairs to resolve it
    assert results["settings"]["far_strict"] == proto["far_strict"] == 1e-3
    assert set(proto["impostor_pairs"]) == {"mobileface", "faceres-deep"}
    assert all(n >= 1000 for n in proto["impostor_pairs"].values()) and all(proto["far_strict_resolved"].values())
    assert all(proto["thresholds_at_far_strict"][e] >= proto["thresholds_at_far"][e] for e in proto["impostor_pairs"])
    for r in rows.values():
        assert 0 <= r["psr_dodge_far1e-3"] <= 1 and 0 <= r["psr_target_far1e-3"] <= 1
        assert r["psr_dodge_far1e-3"] >= r["dodged"]  # a stricter threshold is easier to dodge
    # the white-box / black-box aggregates as rates: value, n probes, low <= value <= high
    for s in summary.values():
        for side in ("white_box", "black_box"):
            for k in ("rank1_ut", "rank1_t", "psr_dodge_far1e-3", "psr_target_far1e-3"):
                rate = s[f"{side}_{k}_rate"]
                if s[f"{side}_rank1_ut"] is None:  # no white-box recognizer (a baseline)
                    assert rate is None
                    continue
                assert rate["n"] == 3 and 0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1
                assert rate["value"] == pytest.approx(s[f"{side}_{k}"])
    # the report: Markdown with the headline table, self-contained HTML, real PNG figures
    md = (out / "report.md").read_text()
    assert "| method | surrogates | white-box R1-UT" in md and "edge preset" in md
    assert "black-box PSR dodge @FAR 0.001" in md and "n = 3 probes per cell" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "figures/" not in html
    grid = cv2.imread(str(out / "figures" / "grid.png"))
    assert grid is not None and grid.shape[0] > 100


@pytest.mark.slow
def test_quick_run_resumes_from_its_caches(quick_eval, capsys):
    from edgecloak.cli.main import main

    out, cache = quick_eval
    photos = sorted((out / "protected").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in photos]
    assert main(["eval", "-o", str(out), "--cache", str(cache), *QUICK_ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["embeddings_computed"] == 0
    assert [p.stat().st_mtime_ns for p in photos] == stamps  # nothing protected again
    assert main(["eval", "-o", str(out), "--report-only"]) == 0
    assert "edge preset" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    """The single stderr line a refused command printed (exactly one, ``edgecloak: error:``, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("edgecloak: error:"), err
    return lines[0]


def test_eval_refuses_bad_arguments_with_one_line(tmp_path, capsys):
    from edgecloak.cli.main import main
    from edgecloak.errors import UsageError

    assert main(["eval", "-o", str(tmp_path), "--report-only"]) == UsageError.exit_code
    assert "no results to report on" in one_line_error(capsys)
    assert main(["eval", "-o", str(tmp_path), "--methods", "none,magic", "--no-sweeps"]) == UsageError.exit_code
    line = one_line_error(capsys)
    assert "unknown method(s) magic; choose from" in line and "none" in line.split("choose from")[1]
    assert not (tmp_path / "results.json").exists()  # refused before anything ran


def test_tipim_as_published_is_a_runtime_method_like_the_others():
    """The paper's published loop (mobileface, N 50, alpha 1.5, eps 12, no input diversity, the last
    iterate) is one more method on the runtime backend; every TIP-IM method runs there."""
    from edgecloak.evaluation.harness import MAIN_METHODS, method_catalogue
    from edgecloak.evaluation.methods import CloakerMethod
    from edgecloak.evaluation.report import LABELS

    catalogue = method_catalogue("onnxruntime", seed=3)
    published = catalogue["tipim-published"]
    assert "tipim-published" in MAIN_METHODS and not any("reference" in name for name in catalogue)
    assert published.surrogates == ("mobileface",) and published.backend == "onnxruntime"
    assert published.config == {"steps": 50, "alpha": 1.5, "eps": 12.0, "diversity": None, "keep_best": False,
                                "seed": 3}
    assert {m.backend for m in catalogue.values() if isinstance(m, CloakerMethod)} == {"onnxruntime"}
    assert LABELS["tipim-published"] == "TIP-IM as published (N 50, no diversity, last iterate)"


def test_eval_has_no_reference_backend(tmp_path, capsys):
    """`eval --backend` takes the runtime backends only: `reference` is refused by the parser (exit 2,
    one error line naming the choices), and by the harness when called from Python."""
    from edgecloak.cli.main import main
    from edgecloak.errors import UsageError
    from edgecloak.evaluation.harness import EvalSettings, run_evaluation
    from edgecloak.runtime.backends import BACKENDS

    with pytest.raises(SystemExit) as exited:
        main(["eval", "-o", str(tmp_path / "out"), "--backend", "reference"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exited.value.code == 2 and len(errors) == 1
    assert "'reference'" in errors[0] and all(name in errors[0] for name in ("auto", *BACKENDS))
    with pytest.raises(UsageError, match="unknown backend 'reference'; choose from auto, "):
        run_evaluation(EvalSettings(out=tmp_path / "out", backend="reference"))
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.slow
def test_untargeted_mifgsm_is_tipim_with_a_zero_target(tmp_path):
    """The MI-FGSM baseline runs the TIP-IM loop on one all-zero target: the loss becomes -D(x, r),
    so the face must move away from itself, towards nobody in particular."""
    from edgecloak.evaluation.methods import CloakerMethod
    from edgecloak.export.zoo.photos import identity_photos
    from edgecloak.runtime.image_io import load_image

    photos = identity_photos()
    method = CloakerMethod("mifgsm", ("mobileface",), {"steps": 6, "alpha": 2.0}, "onnxruntime", untargeted=True)
    method.prepare({name: paths[:1] for name, paths in photos.items()})
    try:
        bank = method.banks["madonna"]
        assert bank.identities == ["(untargeted)"] and not np.any(bank.embeddings["mobileface"])
        image = load_image(photos["madonna"][-1])
        face = method.cloaker.detector.largest_face(image)
        result = method.protect(image, face.box, "madonna", seed=0)
        assert result.target is None and np.abs(result.image.astype(int) - image).max() <= 12
        before = method.cloaker.protector.embed_face(image, face.landmarks)["mobileface"]
        after = method.cloaker.protector.embed_face(result.image, face.landmarks)["mobileface"]
        assert float(before[0] @ after[0]) < 0.6  # pushed off its own identity
    finally:
        method.close()


def test_eval_bundle_flag_wants_name_equals_path(tmp_path, capsys):
    from edgecloak.cli.main import main
    from edgecloak.errors import UsageError

    for bad in ("just-a-path", "=path", "name="):
        assert main(["eval", "-o", str(tmp_path / "out"), "--bundle", bad, "--no-sweeps"]) == UsageError.exit_code
        assert f"--bundle {bad!r}: give NAME=PATH" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # refused before the output folder was made


# -- leave-one-family-out (cross-family transfer) -----------------------------------------------------
def test_families_cover_every_default_evaluator_exactly_once():
    from edgecloak.evaluation.protocol import DEFAULT_EVALUATORS, FAMILIES, family_of

    members = [m for ms in FAMILIES.values() for m in ms]
    assert sorted(members) == sorted(DEFAULT_EVALUATORS) and len(members) == len(set(members))
    assert set(FAMILIES) == {"mobileface", "faceres", "facenet"}
    assert {e: family_of(e) for e in DEFAULT_EVALUATORS} == {
        "mobileface": "mobileface", "faceres": "faceres", "faceres-deep": "faceres",
        "facenet-casia": "facenet", "facenet-keras": "facenet"}
    with pytest.raises(ValueError, match="in no family"):
        family_of("arcface")


def test_cross_family_methods_leave_each_family_out_of_the_surrogates():
    from edgecloak.evaluation.harness import CROSS_FAMILY, cross_family_methods, preset_method
    from edgecloak.evaluation.methods import CloakerMethod

    methods = cross_family_methods("balanced", "onnxruntime", seed=4)
    assert [(m.name, m.surrogates, m.held_out_family) for m in methods] == [
        ("balanced-without-mobileface", ("faceres", "facenet-casia"), "mobileface"),
        ("balanced-without-faceres", ("mobileface", "facenet-casia"), "faceres"),
        ("balanced-without-facenet", ("mobileface", "faceres"), "facenet")]
    preset = preset_method("balanced", "onnxruntime", 4)
    for m in methods:
        assert isinstance(m, CloakerMethod) and m.family == CROSS_FAMILY and m.backend == "onnxruntime"
        assert m.config == preset.config and m.config["seed"] == 4  # the preset's settings, only the surrogates differ
    assert preset.held_out_family is None
    assert len({m.key() for m in methods}) == 3  # each caches its photos apart

    notes = []
    edge = cross_family_methods("edge", log=notes.append)  # mobileface only: nothing left without it
    assert [(m.name, m.surrogates) for m in edge] == [("edge-without-faceres", ("mobileface",)),
                                                      ("edge-without-facenet", ("mobileface",))]
    assert notes == ["note: edge-without-mobileface skipped: every surrogate (mobileface) is in the mobileface family"]
    # a family none of the run's evaluators belongs to is skipped too: nothing would score it
    notes.clear()
    quick = cross_family_methods("edge", evaluators=["mobileface", "faceres-deep"], log=notes.append)
    assert [m.name for m in quick] == ["edge-without-faceres"] and len(notes) == 2
    assert "no evaluator of the facenet family" in notes[1]


def test_held_out_scores_in_a_cross_family_summary():
    """A cross-family method's summary: its held-out family's evaluators only, as means and Rates."""
    from edgecloak.evaluation.harness import _summaries
    from edgecloak.evaluation.methods import CloakerMethod
    from edgecloak.evaluation.metrics import Rate

    method = CloakerMethod("b-without-faceres", ("mobileface", "facenet-casia"), {}, family="cross-family",
                           held_out_family="faceres")
    keys = ("rank1_ut", "rank5_ut", "rank1_t", "rank5_t", "dodged", "psr_dodge_far1e-3", "psr_target_far1e-3")
    outcomes = {("p1", "mobileface"): 1.0, ("p2", "mobileface"): 1.0, ("p1", "faceres"): 1.0,
                ("p2", "faceres"): 0.0, ("p1", "faceres-deep"): 0.0, ("p2", "faceres-deep"): 0.0}
    per_probe = [{"method": method.name, "identity": "u", "photo": photo, "transform": "none", "evaluator": e,
                  **{k: v for k in keys}} for (photo, e), v in outcomes.items()]
    rows = [{"method": method.name, "transform": "none", "evaluator": e, "white_box": e in method.surrogates, "n": 2,
             **{k: float(np.mean([p[k] for p in per_probe if p["evaluator"] == e])) for k in keys}}
            for e in ("mobileface", "faceres", "faceres-deep")]
    records = [{"psnr_face": 30.0, "ssim_face": 0.9, "psnr_photo": 35.0, "ssim_photo": 0.95, "seconds": 1.0}] * 2
    (summary,) = _summaries(method, rows, records, per_probe)
    assert summary["held_out_family"] == "faceres" and summary["held_out_evaluators"] == ["faceres", "faceres-deep"]
    assert summary["held_out_rank1_ut"] == pytest.approx(0.25)  # (1 + 0 + 0 + 0) / 4; mobileface left out
    assert summary["held_out_rank1_ut_rate"] == Rate.of(np.array([0.5, 0.0])).to_dict()
    assert summary["held_out_psr_dodge_far1e-3_rate"]["n"] == 2
    assert summary["white_box_rank1_ut"] == 1.0  # mobileface is still its white-box recognizer
    other = CloakerMethod("edge", ("mobileface",), {})
    assert _summaries(other, rows, records, per_probe)[0]["held_out_family"] is None


def test_cross_family_report_table():
    from edgecloak.evaluation.report import cross_family_rows

    rate = {"value": 0.5, "n": 4, "low": 0.25, "high": 0.75}
    results = {"settings": {"far_strict": 1e-3}, "cross_family": {"edge": {
        "metrics": ["rank1_ut", "psr_dodge_far1e-3"], "surrogates": {"faceres": ["mobileface"]},
        "scored_on": {"faceres": ["faceres", "faceres-deep"]}, "skipped": ["mobileface", "facenet"],
        "matrix": {"faceres": {"rank1_ut": rate, "psr_dodge_far1e-3": None}},
        "mean": {"rank1_ut": rate, "psr_dodge_far1e-3": None}}}}
    headers, rows = cross_family_rows(results, "edge")
    assert headers == ["held-out family", "optimised on", "scored on", "Rank-1-UT", "PSR dodge @FAR 0.001", "n"]
    assert rows == [["faceres", "mobileface", "faceres, faceres-deep", "0.50 [0.25, 0.75]", "-", 4],
                    ["mean over families", "-", "-", "0.50 [0.25, 0.75]", "-", 4]]


def test_recipes_judged_together_are_compared_paired_against_the_first():
    from edgecloak.evaluation.harness import cross_family_values, paired_difference
    from edgecloak.evaluation.report import recipe_comparison_rows

    # two recipes, one family with two evaluators, three probes: per probe the mean over evaluators
    def rows(method, outcomes):
        return [{"method": method, "identity": "u", "photo": photo, "transform": "none", "evaluator": e,
                 "rank1_ut": v} for photo, per_eval in outcomes.items() for e, v in zip(("a1", "a2"), per_eval)]

    per_probe = rows("base-without-a", {"1.jpg": (0, 0), "2.jpg": (1, 0), "3.jpg": (0, 0)})
    per_probe += rows("new-without-a", {"1.jpg": (1, 1), "2.jpg": (1, 1), "3.jpg": (0, 1)})
    held = {"a": ("base-without-a", ["a1", "a2"])}
    base = cross_family_values(per_probe, held, "rank1_ut")
    new = cross_family_values(per_probe, {"a": ("new-without-a", ["a1", "a2"])}, "rank1_ut")
    assert base == {("u", "1.jpg"): 0.0, ("u", "2.jpg"): 0.5, ("u", "3.jpg"): 0.0}
    diff = paired_difference(base, new)
    assert diff["n"] == 3 and diff["value"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert 0 < diff["low"] <= diff["value"] <= diff["high"] <= 1  # every probe gained: the interval excludes 0
    assert paired_difference(base, {("v", "x.jpg"): 1.0}) is None  # no shared probe, no comparison

    rate = {"value": 0.5, "n": 3, "low": 0.2, "high": 0.8}
    section = {"metrics": ["rank1_ut", "psr_dodge_far1e-3"], "mean": {"rank1_ut": rate, "psr_dodge_far1e-3": rate}}
    results = {"settings": {"far_strict": 1e-3},
               "summary": [{"method": "base-without-a", "transform": "none", "seconds": 2.0},
                           {"method": "new-without-a", "transform": "none", "seconds": 3.0}],
               "cross_family": {"base": {**section, "methods": {"a": "base-without-a"}},
                                "new": {**section, "methods": {"a": "new-without-a"},
                                        "versus": {"against": "base", "rank1_ut": diff, "psr_dodge_far1e-3": None}}}}
    headers, table = recipe_comparison_rows(results)
    assert headers[3] == "Rank-1-UT vs base"
    assert table[0][3] == "(reference)" and table[0][5] == "2.00"
    assert table[1][3].startswith("+0.67 [+") and table[1][4] == "-" and table[1][5] == "3.00"
    assert recipe_comparison_rows({**results, "cross_family": {"base": results["cross_family"]["base"]}}) == ([], [])


def test_a_judged_recipe_with_a_bad_setting_is_refused_with_one_line(tmp_path, capsys):
    from edgecloak.cli.main import main

    for spec, message in (("balanced+ti_sigma", "KEY=VALUE"), ("balanced+warp=3", "unknown TIP-IM setting 'warp'"),
                          ("balanced+ti_sigma=-1", "ti_sigma")):
        assert main(["eval", "-o", str(tmp_path / "out"), "--cross-family", spec]) != 0
        assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_eval_refuses_an_unknown_cross_family_preset_with_one_line(tmp_path, capsys):
    from edgecloak.cli.main import main
    from edgecloak.errors import UsageError
    from edgecloak.evaluation.harness import EvalSettings, run_evaluation

    assert UsageError.exit_code == 2
    args = ["eval", "-o", str(tmp_path / "out"), "--cross-family", "edge", "--cross-family", "balanced,magic"]
    assert main(args) == UsageError.exit_code
    assert "unknown preset 'magic'; choose one of" in one_line_error(capsys)
    with pytest.raises(UsageError, match="unknown preset 'magic'"):
        run_evaluation(EvalSettings(out=tmp_path / "out", cross_family=("magic",)))
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_quick_real_run_with_cross_family_transfer(quick_eval, tmp_path):
    """`--cross-family edge` on the quick run: the edge preset without faceres (its surrogates
    unchanged: mobileface) scored on faceres-deep only; mobileface (no surrogate left) and facenet
    (no evaluator) are skipped."""
    from edgecloak.cli.main import main

    _, cache = quick_eval
    out = tmp_path / "cf"
    assert main(["eval", "-o", str(out), "--cache", str(cache), *QUICK_ARGS, "--methods", "edge",
                 "--cross-family", "edge"]) == 0
    results = json.loads((out / "results.json").read_text())
    section = results["cross_family"]["edge"]
    assert section["methods"] == {"faceres": "edge-without-faceres"} and section["skipped"] == ["mobileface", "facenet"]
    assert section["scored_on"] == {"faceres": ["faceres-deep"]}
    cell = section["matrix"]["faceres"]["rank1_ut"]
    summary = {(s["method"], s["transform"]): s for s in results["summary"]}
    held = summary[("edge-without-faceres", "none")]
    assert ("edge-without-faceres", "jpeg75") not in summary  # scored on the clean upload only
    assert held["held_out_rank1_ut_rate"] == cell == section["mean"]["rank1_ut"] and cell["n"] == 3
    # the same recipe and seed as the edge preset: the same photos, so the same faceres-deep score
    assert held["held_out_rank1_ut"] == pytest.approx(summary[("edge", "none")]["black_box_rank1_ut"])
    assert "Cross-family transfer (leave one family out): edge" in (out / "report.md").read_text()
