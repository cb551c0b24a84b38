"""How often a cloak profile recognises its owner, and how often it takes someone else for them.

For every user of the evaluation's photo set, the owner template (``runtime.profile.owner_template``)
is made from the user's optimisation photos, as enrolment makes it; then every probe photo of that
user (genuine) and every probe of the other users plus every distractor face (impostors) is
matched with ``runtime.profile.matches_owner`` (what ``CloakProfile.is_owner`` asks). Prints
JSON and a table per preset's surrogates.

A miss costs time (the owner's face runs the normal loop), a false match only a less fitting start
(the refinement and the self-check still run); neither emits an unprotected face.

Example:
    $ python scripts/measure_owner_match.py --presets fast,balanced --json docs/owner_match.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="fast,balanced", help="comma-separated presets (their surrogates)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    args = parser.parse_args(argv)

    import numpy as np
    from tqdm import tqdm

    from edgecloak import Cloaker
    from edgecloak.evaluation.harness import evaluation_photos
    from edgecloak.evaluation.protocol import enrolment_photos, split_photos
    from edgecloak.export.zoo.photos import load_face_photo
    from edgecloak.runtime.profile import matches_owner, owner_template

    users, distractors = evaluation_photos(distractors=True)
    split = split_photos(users, 4, 3)
    report = {"users": len(users), "probes_per_user": 4, "distractors": sum(len(ps) for ps in distractors.values()), "rows": []}
    for preset in args.presets.split(","):
        cloaker = Cloaker.load(preset=preset)
        protector = cloaker.protector

        def embed(path):
            image = load_face_photo(path)
            return protector.embed_face(image, protector.detector.largest_face(image, str(path)).landmarks)

        probes = {u: [embed(p) for p in split.probes[u]] for u in tqdm(sorted(users), desc=f"{preset}: probes")}
        others = [embed(p) for p in tqdm([p for ps in distractors.values() for p in ps], desc=f"{preset}: distractors")]
        genuine, impostor, per_user = [], [], {}
        for user, photos in enrolment_photos(split).items():
            template = owner_template([embed(p) for p in photos])
            mine = [matches_owner(template, e) for e in probes[user]]
            genuine += mine
            per_user[user] = float(np.mean(mine))
            impostor += [matches_owner(template, e) for u, es in probes.items() if u != user for e in es]
            impostor += [matches_owner(template, e) for e in others]
        report["rows"].append({"preset": preset, "surrogates": list(protector.surrogate_ids),
                               "owner_recognised": float(np.mean(genuine)), "genuine_n": len(genuine),
                               "false_match": float(np.mean(impostor)), "impostor_n": len(impostor),
                               "owner_recognised_per_user": per_user})
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    for r in report["rows"]:
        print(f"{r['preset']:<10} owner recognised {r['owner_recognised']:.2f} (n {r['genuine_n']}), "
              f"false match {r['false_match']:.4f} (n {r['impostor_n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
