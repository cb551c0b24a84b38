"""Running the loop-budget calibration: every ``BudgetPoint`` (``budget.py``) and its
leave-one-family-out runs (``budget.held_out_runs``) through the SDK on the evaluation protocol
(the evaluation harness, one floor down), then the choice of presets on the cross-family
Rank-1-UT (``budget.OBJECTIVE``), the presets file and the Pareto report (``budget_report.py``).
``edgecloak calibrate presets`` calls ``calibrate``.

Example:
    >>> calibration = calibrate("calib-out", quick=True)          # doctest: +SKIP
    >>> sorted(calibration["chosen"])                              # doctest: +SKIP
    ['balanced', 'fast', 'max']
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from edgecloak.evaluation.harness import CROSS_FAMILY, EvalSettings, profile_method, run_evaluation
from edgecloak.evaluation.methods import ProtectionMethod
from edgecloak.evaluation.protocol import DEFAULT_EVALUATORS
from edgecloak.presets import forget_presets, installed_path
from edgecloak.runtime.atomic import write_json_atomic

from .budget import (
    BudgetPoint,
    choose_presets,
    eligible,
    held_out_runs,
    machine_description,
    pareto_front,
    point_figures,
    sweep_points,
    write_presets_file,
)
from .budget_report import write_budget_report


def point_method(point: BudgetPoint, backend: str = "auto", seed: int = 0) -> ProtectionMethod:
    """A sweep point as an evaluation method (``CloakerMethod`` through the SDK; ``ProfileMethod``
    for a profile-started point)."""
    return profile_method(point.name, point.surrogates, {**point.settings, "seed": seed}, backend, point.profile,
                          family="calibration", retries=point.retries, num_targets=point.num_targets)


def sweep_methods(points: Sequence[BudgetPoint], backend: str = "auto", seed: int = 0,
                  evaluators: Sequence[str] = DEFAULT_EVALUATORS) -> list[ProtectionMethod]:
    """The evaluation methods of a sweep: per point, the point itself (``point_method``) and its
    leave-one-family-out runs that are not the point (``held_out_runs``: ``<point>-without-<F>``,
    the point's settings, seed, retries and K on its surrogates outside F, marked
    ``held_out_family=F``; the harness scores these on the clean upload only).

    Example:
        >>> from .budget import sweep_points
        >>> [m.name for m in sweep_methods(sweep_points(quick=True))]  # one surrogate: nothing extra
        ['m-n8', 'm-n32', 'm-n32-r4']
        >>> p = BudgetPoint("m+f-n16", ("mobileface", "faceres"), {"steps": 16})
        >>> [(m.name, m.surrogates, m.held_out_family) for m in sweep_methods([p])][1:]
        [('m+f-n16-without-mobileface', ('faceres',), 'mobileface'), ('m+f-n16-without-faceres', ('mobileface',), 'faceres')]
    """
    methods = []
    for point in points:
        methods.append(point_method(point, backend, seed))
        for family, (name, surrogates) in held_out_runs(point, evaluators).items():
            if name != point.name:
                methods.append(profile_method(name, surrogates, {**point.settings, "seed": seed}, backend,
                                              point.profile, family=CROSS_FAMILY, retries=point.retries,
                                              num_targets=point.num_targets, held_out_family=family))
    return methods


def run_sweep(out, points: Sequence[BudgetPoint], probes_per_identity: int = 4, backend: str = "auto",
              seed: int = 0, progress: bool = True, log=print, workers: int = 1, ray: bool = False,
              ray_address: str | None = None) -> tuple[dict, list[dict[str, Any]]]:
    """Evaluate every point and its leave-one-family-out runs (``sweep_methods``; resumable: the
    evaluation's caches) and return (results, figures).

    Points are scored on clean uploads and JPEG 75 (the robustness a preset keeps after a typical
    upload), the ``-without-`` runs on clean uploads. ``workers``/``ray``: fan the methods out (see
    ``EvalSettings``); latency is then measured on shared cores unless each worker has a machine of
    its own (a Ray cluster).
    """
    settings = EvalSettings(out=Path(out), probes_per_identity=probes_per_identity, methods=("none",),
                            transforms=("none", "jpeg75"), sweeps=False, seed=seed, backend=backend,
                            workers=workers, ray=ray, ray_address=ray_address)
    results = run_evaluation(settings, progress, log,
                             extra_methods=sweep_methods(points, backend, seed, settings.evaluators))
    return results, point_figures(results, points)


def calibrate(out, quick: bool = False, probes_per_identity: int = 4, backend: str = "auto", seed: int = 0,
              install: bool = False, progress: bool = True, log=print, workers: int = 1, ray: bool = False,
              ray_address: str | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Sweep, choose fast / balanced / max, write ``out``/calibration.json, presets.json and the report
    (``install``: also ``$EDGECLOAK_HOME/presets.json``, used by every later run on this machine).
    ``only``: sweep just these grid points (``sweep_points``); the presets are chosen among them.

    Returns the calibration (``chosen`` is empty when no point is eligible; nothing is installed then).

    Example:
        >>> calibration = calibrate("calib-out", quick=True)          # doctest: +SKIP
        >>> sorted(calibration["chosen"])                              # doctest: +SKIP
        ['balanced', 'fast', 'max']
    """
    out = Path(out)
    points = sweep_points(quick, only)
    results, rows = run_sweep(out, points, probes_per_identity, backend, seed, progress, log, workers, ray, ray_address)
    command = ("edgecloak calibrate presets" + (" --quick" if quick else "")
               + (f" --probes {probes_per_identity}" if probes_per_identity != 4 else "")
               + (f" --points {','.join(p.name for p in points)}" if only is not None else ""))
    fan_out = None if workers == 1 and not ray else (f"{workers} {'Ray' if ray else 'local'} worker(s)"
                                                     + (f" at {ray_address}" if ray_address else ""))
    return choose_and_write(out, points, results, rows, command, backend, install, log, fan_out)


def choose_and_write(out: Path, points: Sequence[BudgetPoint], results: dict, rows: list[dict[str, Any]],
                     command: str, backend: str = "auto", install: bool = False, log=print,
                     fan_out: str | None = None) -> dict[str, Any]:
    """From a sweep's results and figures (``run_sweep``): choose the presets and write
    ``out``/calibration.json, presets.json and the report (``install``: also the machine's presets).
    Re-running it on a finished sweep's results.json re-decides without measuring again."""
    out = Path(out)
    try:
        chosen = choose_presets(rows)
    except ValueError as exc:
        log(f"warning: {exc}")
        chosen = {}
    backends = sorted({b for p in points for b in results["backends"].get(p.name, [])})
    meta = {
        "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "command": command,
        "probes": len(results["protocol"]["probes"]), "users": len(results["protocol"]["users"]),
        "eval_targets": len(results["protocol"]["users"]) - 1, "backend": "; ".join(backends) or backend,
        "git_commit": results["versions"].get("git_commit"), "fan_out": fan_out,
    }
    calibration = {"measured": meta, "points": rows, "chosen": chosen,
                   "front": [r["name"] for r in pareto_front([r for r in rows if eligible(r)])]}
    write_json_atomic(out / "calibration.json", calibration)
    write_budget_report(calibration, out)
    if chosen:
        write_presets_file(out / "presets.json", chosen, meta, rows=rows)
        if install:
            installed_path().parent.mkdir(parents=True, exist_ok=True)
            write_presets_file(installed_path(), chosen, meta, rows=rows)
            forget_presets()  # later lookups in this process read the new choice
    return calibration
