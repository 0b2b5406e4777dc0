"""Registration, preparation and automatic VOIs on a generated cohort with realistic head positions.

Usage: ``python bench/bench_registration.py [--patients 4] [--sites 2] [--seed 1] [--no-head-motion]``.

Generates a small cohort (``generate_cohort(head_motion=True)``: PET and MRI each in their own
pose, up to 15 degrees and 20 mm, varied fields of view), imports it into a throw-away SQLite
database and media folder, prepares every exam (the platform's ``exam_prepare``) and prints:

* import throughput (exams per minute, ``bids_import`` alone and with preparation);
* per exam: registration time, and resampling + thumbnails (preparation minus registration),
  wall and CPU seconds (issue 10 goals: registration < 20 s, resampling + thumbnails < 1.5 s);
* target registration error (mm, median and p90 over 300 landmarks in the template brain):
  PET -> MRI against the exact true rigid map, MRI -> MNI and PET -> MNI against the true
  affine (least-squares affine of the true pose + anatomy map, ``*_desc-truepose_xfm.json``);
* automatic VOIs against the supplied masks: Dice per VOI and the agreement (bias, 95 % limits of
  agreement, Bland & Altman 1986) of TBRmax, T/S max and MTV with the mask-based values.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _agreement(auto: np.ndarray, mask: np.ndarray, *, relative: bool = True) -> str:
    ok = np.isfinite(auto) & np.isfinite(mask)
    a, m = auto[ok], mask[ok]
    d = (a - m) / m * 100 if relative else a - m
    unit = "%" if relative else ""
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    return f"bias {d.mean():+.1f}{unit}, 95 % limits {d.mean() - 1.96 * sd:+.1f}{unit} to {d.mean() + 1.96 * sd:+.1f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-head-motion", action="store_true", help="the original small shared pose")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registration-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{work / 'db.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(work / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    import apps.cohorts.services.prepare as prepare_module
    from apps.cohorts.models import Exam, Mask
    from apps.cohorts.services.bids import bids_import
    from apps.cohorts.services.store import media_path
    from ml.io.nifti import load_nifti
    from ml.phantoms import generate_cohort
    from ml.quant.auto_voi import auto_vois, validation_row
    from ml.registration import (
        Transform,
        landmarks_in_mask,
        mni_brain_mask,
        target_registration_error,
    )

    call_command("migrate", verbosity=0)
    motion = not args.no_head_motion
    t0 = time.perf_counter()
    summary = generate_cohort(work / "bids", n_patients=args.patients, n_sites=args.sites, seed=args.seed,
                              head_motion=motion, workers=2)
    print(f"cohort: {summary.n_exams} exams at {', '.join(summary.sites)}, head motion {motion}, "
          f"generated in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    report = bids_import(path=summary.root)
    t_import = time.perf_counter() - t0
    exams = list(Exam.objects.filter(pk__in=report.new_exam_ids).select_related("patient"))

    timing: dict[str, float] = {}
    original = prepare_module.register_exam

    def timed_register(**kw):
        w, c = time.perf_counter(), _cpu()
        out = original(**kw)
        timing["wall"], timing["cpu"] = time.perf_counter() - w, _cpu() - c
        return out

    prepare_module.register_exam = timed_register
    brain = mni_brain_mask()
    points = landmarks_in_mask(brain.array, brain.affine, n=300, seed=0)
    rows, tre = [], {"PET -> MRI": [], "MRI -> MNI": [], "PET -> MNI": []}
    t_prepare = 0.0
    poor = 0
    for exam in exams:
        w, c = time.perf_counter(), _cpu()
        result = prepare_module.exam_prepare(exam=exam)
        wall, cpu = time.perf_counter() - w, _cpu() - c
        t_prepare += wall
        rows.append({"exam": str(exam), "reg_wall": timing["wall"], "reg_cpu": timing["cpu"],
                     "rest_wall": wall - timing["wall"], "rest_cpu": cpu - timing["cpu"]})
        reg = result["registration"]
        poor += bool(reg["similarity"]["poor"])
        sub, ses = f"sub-{exam.patient.code}", f"ses-{exam.code}"
        truth_file = summary.root / "derivatives" / "groundtruth" / sub / ses / f"{sub}_{ses}_desc-truepose_xfm.json"
        if truth_file.exists():
            truth = {k: Transform(np.asarray(v)) for k, v in json.loads(truth_file.read_text()).items()
                     if k != "Description"}
            mri_t = Transform.from_dict(reg["mri_from_template"])
            pet_mri = Transform.from_dict(reg["pet_from_mri"])
            tre["PET -> MRI"].append(target_registration_error(truth["pet_from_mri"], pet_mri,
                                                               truth["mri_from_template"].apply(points)))
            tre["MRI -> MNI"].append(target_registration_error(truth["mri_from_template"], mri_t, points))
            pet_t = Transform.from_dict(exam.volumes.get(kind="pet_static", space="common")
                                        .metadata["registration"]["transform"])
            tre["PET -> MNI"].append(target_registration_error(truth["pet_from_template"], pet_t, points))
    print(f"import: {len(exams) / t_import * 60:.1f} exams/min (bids_import alone, {t_import:.1f} s); "
          f"{len(exams) / (t_import + t_prepare) * 60:.1f} exams/min with preparation")
    for key, label in (("reg", "registration"), ("rest", "resampling + thumbnails")):
        wall = np.array([r[f"{key}_wall"] for r in rows])
        cpu = np.array([r[f"{key}_cpu"] for r in rows])
        print(f"{label} per exam: wall median {np.median(wall):.2f} s (max {wall.max():.2f}), "
              f"CPU median {np.median(cpu):.2f} s (max {cpu.max():.2f})")
    print(f"registrations flagged poor: {poor} of {len(exams)}")
    for name, values in tre.items():
        if values:
            v = np.concatenate(values)
            per_exam = [float(np.median(x)) for x in values]
            print(f"TRE {name}: median {np.median(v):.2f} mm, p90 {np.percentile(v, 90):.2f} mm "
                  f"(worst exam median {max(per_exam):.2f} mm)")
    # automatic VOIs against the supplied masks, through the stored registration
    auto_rows = []
    for exam in exams:
        static = exam.volumes.get(kind="pet_static", space="native")
        data = load_nifti(media_path(static.file.name))
        suv = data.array * float(static.suv_factor)
        supplied = {m.kind: load_nifti(media_path(m.file.name), ndim=(3,)).array > 0.5
                    for m in Mask.objects.filter(exam=exam, space="native", grid=static)}
        if not {"tumor", "background", "striatum"} <= set(supplied):
            continue
        transform = Transform.from_dict(exam.volumes.get(kind="pet_static", space="common")
                                        .metadata["registration"]["transform"])
        vois = auto_vois(suv, data.affine, pet_from_template=transform)
        auto_rows.append(validation_row(suv, data.affine, vois, supplied))
    if auto_rows:
        every = {k: np.array([r[k] for r in auto_rows]) for k in auto_rows[0]}
        above = every["above_threshold"] > 0
        # The threshold method applies to lesions with uptake above 1.6 x background; without an MRI
        # lesion mask a PET-negative lesion cannot be found (its fallback sphere sits on the hottest
        # spot elsewhere), so both populations are reported.
        for label, sel in ((f"{int(above.sum())} exams with voxels above 1.6 x background", above),
                           (f"all {len(auto_rows)} exams", np.ones_like(above))):
            if not sel.any():
                continue
            col = {k: v[sel] for k, v in every.items()}
            print(f"automatic VOIs, {label}:")
            for k in ("dice_tumor", "dice_tumor_btv", "dice_striatum"):
                print(f"  {k}: median {np.nanmedian(col[k]):.2f} (min {np.nanmin(col[k]):.2f})")
            print(f"  TBRmax: {_agreement(col['tbr_max_auto'], col['tbr_max_mask'])}")
            print(f"  T/S max: {_agreement(col['ts_max_auto'], col['ts_max_mask'])}")
            print(f"  MTV: {_agreement(col['mtv_ml_auto'], col['mtv_ml_mask'], relative=False)} mL")
    print(f"(work folder {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
