"""Issue 13 on the platform: ``subregions_map`` on prepared generated exams (habitats, aggressiveness map,
biopsy targets with scanner mm, stored files, idempotence), the ``map_subregions`` command and job,
the cohort association table, the downloads with their permissions and audit, the exam page panel."""
from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import media_path
from apps.registry.models import ExamEmbedding
from apps.subregions.models import SubregionMap
from apps.subregions.services import SubregionError, subregions_map
from ml.io.grid import common_grid
from ml.io.nifti import load_nifti
from ml.registration.transform import Transform
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def mapped_cohort(bids_copy):
    """The generated cohort (4 patients, 2 sites) imported; its initial-diagnosis exams prepared and
    gathered in cohort ``dx``."""
    bids_import(path=bids_copy, cohort_name="all")
    exams = list(Exam.objects.filter(timepoint="initial_diagnosis").order_by("pk"))
    for exam in exams:
        exam_prepare(exam=exam)
    cohort = Cohort.objects.create(name="dx")
    cohort.exams.set(exams)
    return cohort, exams


def _tumour_border_distance(mask: np.ndarray, voxel_mm: float) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.distance_transform_edt(np.pad(mask, 1), sampling=[voxel_mm] * 3)[1:-1, 1:-1, 1:-1]


def _tiny_encoder_version(tmp_path):
    import torch

    from apps.cohorts.services.store import StoreTransaction
    from ml.foundation.model import EncoderConfig, FoundationEncoder, save_encoder
    from tests.factories import ModelVersionFactory

    torch.manual_seed(0)
    encoder = FoundationEncoder(EncoderConfig(img_size=(16, 16, 16), patch_size=8, hidden_size=24, mlp_dim=48,
                                              num_layers=1, num_heads=2, voxel_mm=4.0))
    name, sha = StoreTransaction().put_file(save_encoder(encoder, tmp_path / "enc.pt"), category="models")
    return ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc",
                               algorithm="vit-ssl", artifact=name, artifact_sha256=sha, metrics={})


def test_map_subregions_command_targets_files_downloads_and_rerun(mapped_cohort, client, tmp_path):
    """The command maps every prepared exam (MIL map of WHO grade from the relabelled patients); each
    target is checked against the stack it came from, the registration and the truth mask; files,
    downloads (audited, site-scoped), the exam page legend and an idempotent re-run."""
    from apps.jobs.models import Job
    from apps.registry.foundation import exam_stack

    cohort, exams = mapped_cohort
    for exam, grade in zip(exams, (4, 4, 2, 3)):  # two classes of two: the marker model is fitted
        exam.patient.who_grade = grade
        exam.patient.save()
    call_command("map_subregions", "--model", "none", "--cohort", "dx", "--k", "3", "--margin-mm", "5", "--quiet")
    job = Job.objects.get(kind="map_subregions")
    assert job.status == "succeeded" and job.params["k"] == 3 and len(job.result["maps"]) == 4
    maps = {m.exam_id: m for m in SubregionMap.objects.all()}
    assert set(maps) == {e.pk for e in exams}
    assert all(m.key == "dynamic" and m.n_habitats == 3 for m in maps.values())
    assert "mean-pooled logistic model of WHO grade 4" in maps[exams[0].pk].aggressiveness_source

    exam = exams[0]
    sm = maps[exam.pk]
    stack = exam_stack(exam=exam, voxel_mm=4.0)
    tumour = stack.masks["tumor"] > 0
    depth = _tumour_border_distance(tumour, 4.0)
    g4 = common_grid(4.0)
    t1c = exam.volumes.get(kind="t1c", space="common")
    scanner_from_mni = Transform.from_dict(t1c.metadata["registration"]["transform"])
    truth = stack.masks["aggressive"] > 0
    for method in ("map", "suvmax", "earliest_ttp"):
        t = sm.targets[method]
        v = tuple(t["voxel"])
        assert tumour[v]
        assert t["fallback"] or depth[v] >= 5.0 - 1e-6  # the safety margin, from an independent EDT
        assert np.allclose(g4.affine @ [*v, 1], [*t["mni_mm"], 1], atol=0.01)
        assert np.allclose(scanner_from_mni.apply(np.array(t["mni_mm"]))[0], t["scanner_mm"], atol=0.02)
        assert t["hit"] == bool(truth[v])
    # the routine target is the hottest tumour voxel that keeps the margin
    deep = tumour & (depth >= 5.0 - 1e-6)
    assert stack.suv[tuple(sm.targets["suvmax"]["voxel"])] == pytest.approx(stack.suv[deep].max())

    # stored files on the 2 mm common grid
    hab = load_nifti(media_path(sm.habitats.name))
    assert hab.array.shape == common_grid(2.0).shape and np.allclose(hab.affine, common_grid(2.0).affine)
    labels = np.rint(hab.array).astype(int)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).sum() == tumour.sum() * 8
    assert sm.signature["frac_h0"] + sm.signature["frac_h1"] + sm.signature["frac_h2"] == pytest.approx(1.0)
    region = load_nifti(media_path(sm.region.name)).array > 0
    centre = (np.array(sm.targets["map"]["voxel"]) * 2)
    assert region[tuple(centre)] and region.sum() * 8 / 1000 == pytest.approx(sm.targets["map"]["region_ml"])

    coordinator = user_with("coordinator", exam.patient.site)
    client.force_login(coordinator)
    # point list: scanner mm, one row per method
    response = client.get(reverse("subregions:targets-csv", args=[sm.pk]))
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert response.status_code == 200 and [r["method"] for r in rows] == ["map", "suvmax", "earliest_ttp"]
    assert [float(rows[0][c]) for c in ("x_mm", "y_mm", "z_mm")] == pytest.approx(sm.targets["map"]["scanner_mm"])
    # DICOM SEG on the native T1c series, with the series it references
    response = client.get(reverse("subregions:file", args=[sm.pk, "seg"]))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        seg = pydicom.dcmread(io.BytesIO(zf.read("target_seg.dcm")))
        sources = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist() if n != "target_seg.dcm"]
    assert seg.Modality == "SEG" and sources
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.pixel_array.any()
    assert AuditEvent.objects.filter(action="subregions.download").count() == 2
    # the exam page: legend in words and units, habitats overlay and the target markers in the viewer
    page = client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode()
    t = sm.targets["map"]
    assert (f"Biopsy target (learned map): {t['scanner_mm'][0]:.1f}, {t['scanner_mm'][1]:.1f}, "
            f"{t['scanner_mm'][2]:.1f} mm scanner (t1c); {t['border_distance_mm']:.0f} mm from the tumour border") in page
    assert '"key": "habitats"' in page and '"name": "Biopsy target (learned map)"' in page
    # another site's user sees nothing
    client.force_login(user_with("coordinator", SiteFactory()))
    assert client.get(reverse("subregions:targets-csv", args=[sm.pk])).status_code == 404
    assert client.get(reverse("subregions:file", args=[sm.pk, "region"])).status_code == 404
    client.logout()
    assert client.get(reverse("subregions:file", args=[sm.pk, "region"])).status_code in (302, 403)

    # re-run: same rows, same files, nothing duplicated
    before = {m.pk: (m.habitats_sha256, m.aggressiveness_sha256) for m in maps.values()}
    report = subregions_map(cohort="dx", k=3, margin_mm=5.0)
    assert set(report.maps) == set(before) and SubregionMap.objects.count() == 4
    assert {m.pk: (m.habitats_sha256, m.aggressiveness_sha256) for m in SubregionMap.objects.all()} == before
    # one exam only, a larger margin: only its row changes
    subregions_map(cohort="dx", exam=exam, k=3, margin_mm=8.0)
    sm.refresh_from_db()
    assert sm.margin_mm == 8.0 and all(t["margin_mm"] == 8.0 for t in sm.targets.values())
    assert SubregionMap.objects.get(exam=exams[1]).margin_mm == 5.0

    # with a (tiny, random) foundation encoder: embeddings computed for the cohort, a second mapping
    encoder_version = _tiny_encoder_version(tmp_path)
    report = subregions_map(cohort="dx", exam=exam, model_version=encoder_version, k=2, margin_mm=5.0)
    deep = SubregionMap.objects.get(exam=exam, key=f"model-{encoder_version.pk}")
    assert report.maps == [deep.pk] and deep.model_version == encoder_version and deep.n_habitats == 2
    assert "emb_0" in deep.features and "ttp_min" in deep.features
    assert ExamEmbedding.objects.filter(model_version=encoder_version).count() == 4
    assert SubregionMap.objects.filter(exam=exam).count() == 2  # the dynamics-only mapping stays

    # the exam page's aggressiveness overlay: windowed from 25 % of the map's maximum (read here with
    # nibabel) to it; with the file lost from the store the page still opens (default window)
    import nibabel as nib

    from apps.subregions.panels import aggressiveness_layer, aggressiveness_window

    other = SubregionMap.objects.get(exam=exams[1])
    top = float(np.nanmax(np.asarray(nib.load(media_path(other.aggressiveness.name)).dataobj)))
    layer = aggressiveness_layer(other, "/x/")
    assert top > 0 and layer["cal_max"] == pytest.approx(top) and layer["cal_min"] == pytest.approx(0.25 * top)
    aggressiveness_window.cache_clear()
    media_path(other.aggressiveness.name).rename(tmp_path / "moved.nii.gz")
    assert aggressiveness_layer(other, "/x/")["cal_max"] == 1.0
    client.force_login(user_with("coordinator", exams[1].patient.site))
    assert client.get(reverse("cohorts:exam", args=[exams[1].pk])).status_code == 200


def test_bad_requests_are_refused_with_the_reason(bids_copy):
    from tests.factories import ModelVersionFactory

    bids_import(path=bids_copy, cohort_name="raw")
    with pytest.raises(SubregionError, match="no cohort named 'nope'"):
        subregions_map(cohort="nope")
    with pytest.raises(SubregionError, match="not a foundation encoder"):
        subregions_map(cohort="raw", model_version=ModelVersionFactory())
    with pytest.raises(SubregionError, match="margin_mm"):
        subregions_map(cohort="raw", margin_mm=-1)
    with pytest.raises(SubregionError, match="no exam could be mapped: .*prepare_exams"):
        subregions_map(cohort="raw")  # imported, not prepared
    with pytest.raises(CommandError, match="no cohort named 'nope'"):
        call_command("map_subregions", "--model", "none", "--cohort", "nope")
    with pytest.raises(CommandError, match="a model version id or 'none'"):
        call_command("map_subregions", "--model", "x", "--cohort", "raw")
    with pytest.raises(CommandError, match="not a foundation encoder"):
        call_command("map_subregions", "--model", str(ModelVersionFactory().pk), "--cohort", "raw")
    with pytest.raises(CommandError, match="not in cohort 'other'"):
        other = Cohort.objects.create(name="other")
        call_command("map_subregions", "--model", "none", "--cohort", other.name,
                     "--exam", str(Exam.objects.first().pk))
    with pytest.raises(CommandError, match="--margin-mm must be >= 0"):
        call_command("map_subregions", "--model", "none", "--cohort", "raw", "--margin-mm", "-2")
    with pytest.raises(CommandError, match="failed|no exam could be mapped"):
        call_command("map_subregions", "--model", "none", "--cohort", "raw", "--quiet")
    assert not SubregionMap.objects.exists()
