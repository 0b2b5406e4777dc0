"""The biopsy task of a diagnosis reader study with the subregion map (reader_study.biopsy): the aided
arm shows the aggressiveness map and the learned target, each placed target is scored against the
true aggressive subregion, and the results compare hit rates unaided vs aided (MRMC, binary FOM)."""
from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.cohorts.services.store import StoreTransaction
from apps.subregions.models import SubregionMap
from ml.io.grid import common_grid
from ml.io.nifti import nifti_bytes
from reader_study import biopsy, selectors
from reader_study.models import Arm, Reading, Study
from reader_study.simulation import readers_simulate
from tests.factories import MaskFactory, VolumeFactory, user_with
from tests.reader_study.factories import study_world

pytestmark = pytest.mark.django_db

INSIDE, OUTSIDE = [45, 55, 45], [10, 10, 10]


def _store(array, dtype) -> tuple[str, str]:
    return StoreTransaction().put_bytes(nifti_bytes(array, common_grid(2.0).affine, dtype=dtype),
                                        category="test", suffix=".nii.gz")


@pytest.fixture
def biopsy_study():
    """6 cases x 3 readers, both arms read; every case but the last has a true aggressive subregion
    (a box on the common grid); each reader's target hits by a fixed pattern: aided more often."""
    study = study_world(n_cases=6, n_readers=3, seed=2)
    Study.objects.filter(pk=study.pk).update(task="biopsy_target")
    study.refresh_from_db()
    readers_simulate(study=study, n_readers=3, seed=4)
    truth = np.zeros(common_grid(2.0).shape, np.uint8)
    truth[40:50, 50:60, 40:50] = 1
    name, sha = _store(truth, np.uint8)
    cases = list(study.cases.order_by("code"))
    for case in cases[:-1]:
        pet = VolumeFactory(exam=case.exam, kind="pet_static", space="common")
        MaskFactory(grid=pet, exam=case.exam, kind="aggressive", space="common", file=name, sha256=sha,
                    n_voxels=int(truth.sum()))
    readers = sorted({r.reader.code for r in Reading.objects.filter(reader__study=study)})
    expected = {Arm.UNAIDED: [], Arm.AIDED: []}
    for reading in Reading.objects.filter(reader__study=study).select_related("reader", "case"):
        r, c = readers.index(reading.reader.code), [x.pk for x in cases].index(reading.case_id)
        hit = (r + c) % 4 != 0 if reading.arm == Arm.AIDED else (r + c) % 2 == 0
        Reading.objects.filter(pk=reading.pk).update(target_voxel=INSIDE if hit else OUTSIDE,
                                                     target_mm=[0.0, 0.0, 0.0])
        if c < len(cases) - 1:
            expected[reading.arm].append(hit)
    return study, cases, expected


def test_each_reading_is_scored_against_the_true_subregion(biopsy_study):
    study, cases, _ = biopsy_study
    readings = list(Reading.objects.filter(reader__study=study).select_related("case"))
    last = cases[-1].pk
    for reading in readings:
        hit = biopsy.reading_hit(reading)
        if reading.case_id == last:
            assert hit is None  # no known subregion
        else:
            assert hit == (reading.target_voxel == INSIDE)
    untargeted = readings[0]
    untargeted.target_voxel = None
    assert biopsy.reading_hit(untargeted) is None


def test_hit_rates_and_the_mrmc_comparison(biopsy_study, client):
    study, cases, expected = biopsy_study
    res = biopsy.biopsy_results(study)
    arms = {a["arm"]: a for a in res["arms"]}
    for arm in (Arm.UNAIDED, Arm.AIDED):
        assert arms[arm]["n_readings"] == len(expected[arm]) == 15
        assert arms[arm]["hit_rate"] == pytest.approx(np.mean(expected[arm]))
        assert arms[arm]["ci_low"] < arms[arm]["hit_rate"] < arms[arm]["ci_high"]
    assert res["n_readers"] == 3 and res["n_cases"] == 5
    assert any(cases[-1].code in n for n in res["notes"])
    m = res["mrmc"]
    assert m["difference"] == pytest.approx(np.mean(expected[Arm.AIDED]) - np.mean(expected[Arm.UNAIDED]))
    assert m["ci_low"] < m["difference"] < m["ci_high"] and 0 <= m["p_value"] <= 1
    # the same readings in both arms: no difference (its variance is 0 too: p is 1 or undefined)
    for reading in Reading.objects.filter(reader__study=study, arm=Arm.AIDED):
        twin = Reading.objects.get(reader=reading.reader, case=reading.case, arm=Arm.UNAIDED)
        Reading.objects.filter(pk=reading.pk).update(target_voxel=twin.target_voxel)
    same = biopsy.biopsy_results(study)["mrmc"]
    assert same["difference"] == pytest.approx(0.0) and not same["p_value"] < 0.5
    # the results page and API show them
    client.force_login(user_with("admin"))
    page = client.get(reverse("reader_study:results", args=[study.slug])).content.decode()
    assert "Biopsy targets: hit rate without and with the AI map" in page and "binary figure of merit" in page
    api = client.get(f"/api/studies/{study.slug}/results/").json()
    assert api["biopsy_targets"]["n_cases"] == 5


def test_the_aided_arm_shows_the_map_and_the_learned_target(biopsy_study, client):
    study, cases, _ = biopsy_study
    case = cases[0]
    VolumeFactory(exam=case.exam, kind="t1c", space="common", units="")
    agg = np.zeros(common_grid(2.0).shape, np.float32)
    agg[44:47, 54:57, 44:47] = 1.0
    name, sha = _store(agg, np.float32)
    SubregionMap.objects.create(exam=case.exam, key="dynamic", n_habitats=2, margin_mm=5, voxel_mm=4,
                                habitats=name, habitats_sha256=sha, aggressiveness=name, aggressiveness_sha256=sha,
                                region=name, region_sha256=sha, aggressiveness_source="test",
                                targets={"map": {"mni_mm": [-4.0, 0.0, 12.0], "voxel": [23, 27, 22]}})
    reader = study.readers.order_by("code").first()
    aided = selectors.case_viewer_config(reader, case, Arm.AIDED)
    unaided = selectors.case_viewer_config(reader, case, Arm.UNAIDED)
    names = [o["name"] for o in aided["overlays"]]
    assert "AI aggressiveness" in names
    assert {"name": biopsy.AI_TARGET_NAME, "mm": [-4.0, 0.0, 12.0], "color": "#39ff14"} in aided["markers"]
    assert "AI aggressiveness" not in [o["name"] for o in unaided["overlays"]]
    assert biopsy.AI_TARGET_NAME not in [m["name"] for m in unaided.get("markers", [])]
    url = next(o["url"] for o in aided["overlays"] if o["name"] == "AI aggressiveness")
    client.force_login(reader.user)
    response = client.get(url)
    assert response.status_code == 200
