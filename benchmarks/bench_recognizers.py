"""Time the recognizers the way TIP-IM uses them: forward and forward+backward on CPU.

Usage: python benchmarks/bench_recognizers.py [--models mobileface,faceres] [--repeats 7]
                                              [--threads N] [--compare-unfused]

Per recognizer (``Recognizer.load(id)``: converted once into the cache, then loaded), median
wall-clock seconds of
  fwd1    forward, batch 1, under ``torch.no_grad()``
  fwd10   forward, batch 10, under ``torch.no_grad()``
  fb10    forward+backward, batch 10: unit embeddings, a fixed cotangent, the input gradient
          (one TIP-IM step does one fb10 per surrogate, plus one fwd10)
then a table and one JSON line (``{"bench": "recognizers", ...}``) with every number.

``--compare-unfused`` also times the TF.js recognizers converted with ``fuse=False`` (the
literal op-by-op interpretation of the graph) and prints fused/unfused ratios; the two are timed
alternately, repeat by repeat, so load on a shared machine hits both alike. Recognizers whose
source cannot be fetched or converted here are reported as skipped, not fatal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from edgecloak.export.recognizers import Recognizer
from edgecloak.export.zoo.registry import recognizer_ids, recognizer_spec

DEFAULT_MODELS = ["mobileface", "faceres", "faceres-deep", "facenet-casia", "facenet-keras"]
MODES = ("fwd1", "fwd10", "fb10")


def crops(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of 0..255 RGB crops (smooth random images; timings do not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, max(size // 16, 2), max(size // 16, 2), generator=g) * 255
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def step_fns(rec: torch.nn.Module, size: int, dim: int) -> dict[str, Callable[[], object]]:
    x1, x10 = crops(size, 1), crops(size, 10)
    v = torch.randn(10, dim, generator=torch.Generator().manual_seed(1))

    def fwd(x: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return rec(x)
        return run

    def fb10() -> object:
        x = x10.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((rec(x) * v).sum(), x)
        return grad

    return {"fwd1": fwd(x1), "fwd10": fwd(x10), "fb10": fb10}


def time_alternating(variants: dict[str, dict[str, Callable[[], object]]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median seconds per (variant, mode); variants alternate within every repeat."""
    samples: dict[str, dict[str, list[float]]] = {v: {m: [] for m in MODES} for v in variants}
    for mode in MODES:
        for _ in range(warmup):
            for fns in variants.values():
                fns[mode]()
        for _ in range(repeats):
            for name, fns in variants.items():
                start = time.perf_counter()
                fns[mode]()
                samples[name][mode].append(time.perf_counter() - start)
    return {v: {m: statistics.median(s) for m, s in modes.items()} for v, modes in samples.items()}


def unfused_recognizer(model_id: str) -> Recognizer | None:
    """The same TF.js recognizer converted with ``fuse=False``; None for other formats."""
    spec = recognizer_spec(model_id)
    if spec.format != "tfjs":
        return None
    from edgecloak.export.convert import tfjs
    from edgecloak.export.zoo.fetch import member_path

    net = tfjs.convert(member_path(spec.package, spec.source), spec.output_node, fuse=False)
    return Recognizer(spec, net)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated recognizer ids (known: {', '.join(recognizer_ids())})")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per mode first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--compare-unfused", action="store_true",
                        help="also time fuse=False TF.js conversions and print fused/unfused ratios")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, dict] = {}
    for model_id in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            spec = recognizer_spec(model_id)
            rec = Recognizer.load(model_id)
            variants = {"fused": step_fns(rec, spec.input_size, spec.embedding_dim)}
            unfused = unfused_recognizer(model_id) if args.compare_unfused else None
            if unfused is not None:
                variants["unfused"] = step_fns(unfused, spec.input_size, spec.embedding_dim)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be fetched or converted here is skipped
            print(f"{model_id}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            results[model_id] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        timed = time_alternating(variants, args.repeats, args.warmup)
        row: dict = {"format": spec.format, "input_size": spec.input_size, **timed["fused"]}
        ops = getattr(rec.net, "ops", None)
        if ops is not None:
            row["ops"] = len(ops)
        if "unfused" in timed:
            row["unfused"] = timed["unfused"]
            row["unfused_ops"] = len(unfused.net.ops)  # type: ignore[union-attr]
            row["speedup"] = {m: timed["unfused"][m] / timed["fused"][m] for m in MODES}
        results[model_id] = row
        print(f"{model_id}: done", file=sys.stderr, flush=True)

    print(f"\nCPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats} (seconds)")
    header = f"{'model':<14}{'format':<10}{'ops':>5}" + "".join(f"{m:>10}" for m in MODES)
    if args.compare_unfused:
        header += f"{'ops(unf)':>10}" + "".join(f"{m + '(unf)':>12}" for m in MODES) + "".join(f"{'x' + m:>9}" for m in MODES)
    print(header)
    for model_id, row in results.items():
        if "skipped" in row:
            print(f"{model_id:<14}skipped: {row['skipped']}")
            continue
        line = f"{model_id:<14}{row['format']:<10}{row.get('ops', ''):>5}" + "".join(f"{row[m]:>10.4f}" for m in MODES)
        if "unfused" in row:
            line += f"{row['unfused_ops']:>10}" + "".join(f"{row['unfused'][m]:>12.4f}" for m in MODES)
            line += "".join(f"{row['speedup'][m]:>9.2f}" for m in MODES)
        print(line)
    print(json.dumps({"bench": "recognizers", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "repeats": args.repeats, "seconds": "median wall-clock", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
