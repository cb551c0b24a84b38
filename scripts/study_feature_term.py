"""Would an intermediate-feature term make the cloak transfer across recognizer families? A study,
measured before the term is built into the gradient graphs.

The loop's identity loss only looks at each surrogate's embedding. ILA / FIA-style attacks add a
term on a middle layer's feature map, whose features different networks share more than their
final embeddings. Building that into the product means new graph inputs and outputs on every engine,
so this script first measures whether it pays, on the evaluation's leave-one-family-out protocol,
with the surrogates run by torch autograd (workstation only) inside the product's own loop:

* ``none``: the identity loss alone (the control: the product's loop on torch instead of ONNX Runtime);
* ``disrupt:W``: plus a feature-disruption term, ``-||f_L(x) - f_L(x0)||^2`` (push the middle layer's
  features away from the clean face's);
* ``fia:W``: plus FIA's term, ``<w, f_L(x)>`` with ``w`` the clean face's aggregate gradient of
  its similarity to its own embedding with respect to ``f_L``, averaged over 8 copies with 10% of
  the pixels dropped (push down the features the recognizer relies on for this identity).

Each term's input gradient is scaled to the identity gradient's mean magnitude and added with
weight W. The layer L is the last convolution before the feature maps fall below a tenth of the
input's side (mobileface's 14 x 14, faceres's 28 x 28, facenet-casia's 17 x 17: about a stride of
8, where ILA and FIA find transfer best).

Example (about 15 minutes per variant on 2 cores):
    $ python scripts/study_feature_term.py -o study/ --variants none,disrupt:1,fia:1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def feature_layer(shapes: list[tuple[int, ...]], input_size: int) -> int:
    """Index of the last convolution output before the maps fall below ``input_size / 10`` on a side.

    Example:
        >>> feature_layer([(8, 56, 56), (8, 14, 14), (8, 14, 14), (16, 7, 7)], 112)
        2
    """
    for i, shape in enumerate(shapes):
        if shape[-1] < input_size / 10:
            return max(i - 1, 0)
    return len(shapes) - 1


def _interval(rate: dict, spec: str = ".2f") -> str:
    """``value [low, high]`` of a rate or a paired difference from the evaluation's results."""
    return f"{rate['value']:{spec}} [{rate['low']:{spec}}, {rate['high']:{spec}}]"


def study_backend(term: str, weight: float):
    """A backend whose engines are the zoo's torch recognizers, with the feature term added."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from edgecloak.export.gradgraph import _FeatureMaps
    from edgecloak.export.recognizers import Recognizer
    from edgecloak.runtime.backends.base import Backend, SurrogateEngine

    class Capture(TorchFunctionMode):
        """Keeps the output of the ``index``-th convolution call."""

        def __init__(self, index: int):
            super().__init__()
            self.index, self.seen, self.feature = index, 0, None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.conv2d, F.conv2d):
                if self.seen == self.index:
                    self.feature = out
                self.seen += 1
            return out

    class StudyEngine(SurrogateEngine):
        def __init__(self, files):
            super().__init__(files)
            self.rec = Recognizer.load(files.id).eval()
            s = files.input_size
            maps = _FeatureMaps()
            with torch.no_grad(), maps:
                self.rec(torch.zeros(1, 3, s, s))
            self.layer = feature_layer(maps.shapes, s)
            self.reference = None  # f_L of the clean face (disrupt) or FIA's aggregate gradient w
            self.awaiting_reference = False

        @property
        def has_held_graph(self) -> bool:
            return True

        def start_face(self) -> None:
            self.awaiting_reference = True

        def _forward(self, x):
            capture = Capture(self.layer)
            with capture:
                emb = self.rec(x)
            return emb, capture.feature

        def _set_reference(self, crop) -> None:
            x = torch.from_numpy(np.ascontiguousarray(crop))
            if term == "disrupt":
                with torch.no_grad():
                    self.reference = self._forward(x)[1]
                return
            # FIA: the aggregate gradient of the similarity to the own embedding w.r.t. f_L
            with torch.no_grad():
                own = self.rec(x)
            gen = torch.Generator().manual_seed(0)
            copies = x.repeat(8, 1, 1, 1) * (torch.rand(8, 1, *x.shape[2:], generator=gen) > 0.1)
            copies.requires_grad_(True)  # the recognizer's weights are frozen: autograd needs a leaf
            with torch.enable_grad():
                emb, feature = self._forward(copies)
                (w,) = torch.autograd.grad((emb @ own[0]).sum(), feature)
            w = w.sum(0, keepdim=True)
            self.reference = w / w.norm()

        def embed(self, crops):
            if self.awaiting_reference:  # the loop's first call for a face: the clean crop
                self.awaiting_reference = False
                if term != "none":
                    self._set_reference(crops[:1])
            with torch.no_grad():
                return self.rec(torch.from_numpy(np.ascontiguousarray(crops))).numpy()

        def _gradient(self, crop, cotangents, feature_keep=None, held=False):
            k = cotangents.shape[1]
            rows = k + (term != "none")
            x = torch.from_numpy(np.ascontiguousarray(crop)).expand(rows, -1, -1, -1).clone().requires_grad_(True)
            cot = torch.from_numpy(np.ascontiguousarray(cotangents[0]))
            with torch.enable_grad():
                emb, feature = self._forward(x)
                loss = (emb[:k] * cot).sum()
                if term == "disrupt":  # descending -||f - f0||^2 moves f away from f0
                    loss = loss - ((feature[k] - self.reference[0]) ** 2).sum()
                elif term == "fia":
                    loss = loss + (feature[k] * self.reference[0]).sum()
                (grad,) = torch.autograd.grad(loss, x)
            grad = grad.numpy()
            if term != "none":
                identity, extra = grad[:k], grad[k:]
                scale = np.abs(identity).mean() / max(float(np.abs(extra).mean()), 1e-12)
                grad = identity + np.float32(weight * scale) * extra
            return emb[:1].detach().numpy(), grad[None]

    class StudyBackend(Backend):
        name = "study"

        @classmethod
        def available(cls):
            return True, "torch autograd (study)"

        def load(self, files):
            return StudyEngine(files)

    return StudyBackend()


def install(log=print) -> None:
    """Route ``study:TERM:W`` backends and ``+study=TERM:W`` cross-family specs to the study engines."""
    import edgecloak.runtime.protector as protector
    from edgecloak.evaluation import harness

    select, cross_family_methods = protector.select_backend, harness.cross_family_methods

    def select_backend(name: str = "auto"):
        if name.startswith("study:"):
            _, term, weight = name.split(":")
            return study_backend(term, float(weight)), name
        return select(name)

    class StudyLoop(protector.RuntimeTIPIM):
        def run(self, *args, **kwargs):
            for e in self.engines:
                if hasattr(e, "start_face"):
                    e.start_face()
            return super().run(*args, **kwargs)

    def study_methods(spec, backend="auto", seed=0, evaluators=None, log=None):
        base, _, variant = spec.partition("+study=")
        methods = cross_family_methods(base, backend, seed, evaluators, log)
        if variant:
            term, _, weight = variant.partition(":")
            for m in methods:
                m.name = m.name.replace(base, spec, 1)
                m.backend = f"study:{term}:{weight or 0}"
        return methods

    protector.select_backend = select_backend
    protector.RuntimeTIPIM = StudyLoop
    harness.cross_family_methods = study_methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--variants", default="none,disrupt:1,fia:1")
    parser.add_argument("--probes", type=int, default=4)
    args = parser.parse_args(argv)

    from edgecloak.evaluation.harness import EvalSettings, run_evaluation

    install()
    # the first variant is what the others are paired against (``none``: the same engines, no term)
    specs = [f"{args.preset}+study={v}" for v in args.variants.split(",")]
    settings = EvalSettings(out=args.out, probes_per_identity=args.probes, methods=("none",), transforms=("none",),
                            sweeps=False, backend="onnxruntime", cross_family=tuple(specs))
    results = run_evaluation(settings)
    rows = []
    for spec, cf in results["cross_family"].items():
        row = {"recipe": spec, **{k: cf["mean"][k] for k in cf["metrics"]},
               "per_family": {f: cf["matrix"][f]["rank1_ut"]["value"] for f in cf["matrix"]}}
        if "versus" in cf:
            row["versus"] = cf["versus"]
        rows.append(row)
        print(f"{spec:>32}: " + "  ".join(f"{k} {_interval(cf['mean'][k])}" for k in cf["metrics"])
              + "  " + " ".join(f"{f} {v:.2f}" for f, v in row["per_family"].items()))
        for k, d in cf.get("versus", {}).items():
            if isinstance(d, dict):
                print(f"{'':>34}{k} vs {cf['versus']['against']}: {_interval(d, '+.2f')}")
    seconds = {s["method"]: s["seconds"] for s in results["summary"] if s["transform"] == "none"}
    (args.out / "study.json").write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
