"""The viewer configuration (apps.quantification.viewer): lesion position, SUV window, layers with
units, TAC and dynamic frames, blinding, and the exam page that embeds it."""
from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.quantification.panels import exam_page_url
from apps.quantification.services import exam_quantify
from apps.quantification.viewer import PET_WINDOW_MIN_TBR, exam_viewer_config
from ml.io.grid import common_grid
from ml.io.nifti import nifti_bytes
from tests.factories import (
    ExamFactory,
    ExamQuantificationFactory,
    MaskFactory,
    VolumeFactory,
    user_with,
)

pytestmark = pytest.mark.django_db

NEUTRAL_FILENAMES = {"t1c.nii.gz", "flair.nii.gz", "t1.nii.gz", "t2.nii.gz", "pet.nii.gz", "voi.nii.gz",
                     "ttp.nii.gz", "slope.nii.gz", "heatmap.nii.gz", "pet_dynamic.nii.gz"}


def _opaque_url_for(obj) -> str:
    """A reader-page-like url_for: opaque tokens, nothing derived from the objects' names."""
    kind = obj[1] if isinstance(obj, tuple) else type(obj).__name__.lower()
    return f"/r/{kind}/{abs(hash((kind, id(obj)))) % 10**8:08d}/"


@pytest.fixture
def prepared_exam(one_subject):
    bids_import(path=one_subject)
    exam = Exam.objects.get(code="02")
    exam_prepare(exam=exam)
    quant = exam_quantify(exam=exam, radiomics=False)
    return exam, quant, one_subject


def test_generated_exam_opens_on_the_tumour_suvmax_in_suv(prepared_exam):
    exam, quant, bids = prepared_exam
    config = exam_viewer_config(exam, url_for=exam_page_url)

    # independent lesion position: argmax of the BIDS static PET inside the ground-truth tumour mask
    pet_img = nib.load(next(bids.glob("sub-*/ses-02/pet/*acstat_pet.nii.gz")))
    mask = nib.load(next(bids.glob("derivatives/groundtruth/sub-*/ses-02/pet/*desc-tumor_mask.nii.gz")))
    pet = np.asarray(pet_img.dataobj, dtype=float)
    ijk = np.unravel_index(np.argmax(np.where(np.asarray(mask.dataobj) > 0.5, pet, -np.inf)), pet.shape)
    expected = nib.affines.apply_affine(pet_img.affine, ijk)
    np.testing.assert_allclose(quant.lesion_mm, expected, atol=1e-2)
    # the viewer shows the common grid (template space, other world coordinates than the scanner's):
    # it opens on the tumour SUVmax voxel there (nibabel on the stored common-grid files)
    pet_volume = exam.volumes.get(kind="pet_static", space="common")
    common_pet = nib.load(media_path(pet_volume.file.name))
    common_tumour = nib.load(media_path(exam.masks.get(kind="tumor", space="common", grid=pet_volume).file.name))
    hottest = np.unravel_index(np.argmax(np.where(np.asarray(common_tumour.dataobj) > 0.5,
                                                  np.asarray(common_pet.dataobj, dtype=float), -np.inf)),
                               common_tumour.shape)
    np.testing.assert_allclose(config["crosshair"], nib.affines.apply_affine(common_tumour.affine, hottest),
                               atol=1e-2)
    # the same lesion: resampling to the template grid keeps most of the native SUVmax there
    assert np.asarray(common_pet.dataobj, dtype=float)[hottest] > 0.8 * quant.suv_max
    assert config["lesion"]["source"] == "quantification"
    # what the crosshair reads there, said beside the native SUVmax (resampling smooths the peak)
    displayed = float(np.asarray(common_pet.dataobj, dtype=float)[hottest])
    assert config["lesion"]["displayed_suv_max"] == pytest.approx(displayed, abs=0.01)
    assert config["lesion"]["suv_max"] == pytest.approx(quant.suv_max, abs=0.01)
    assert config["markers"][0]["mm"] == config["crosshair"]

    base, pet_layer = config["volumes"]
    assert base["key"] == "t1c" and [b["key"] for b in config["bases"]] == ["t1c", "flair"]
    assert pet_layer["unit"] == "SUV"
    background = quant.config["static"]["background_mean"]
    assert pet_layer["cal_min"] == pytest.approx(PET_WINDOW_MIN_TBR * background, abs=1e-3)
    assert pet_layer["cal_max"] == pytest.approx(quant.suv_max, abs=1e-3)
    assert "TBR 1.6" in pet_layer["window_basis"]
    # the PET file served is the common-grid one, in SUV
    common_pet = exam.volumes.get(kind="pet_static", space="common")
    assert pet_layer["url"] == reverse("cohorts:volume-file", args=[common_pet.pk]) and common_pet.units == "SUV"

    layers = {o["key"]: o for o in config["overlays"]}
    assert set(layers) == {"voi", "ttp", "slope"}
    assert all(o["visible"] is False and 0 < o["opacity"] <= 1 for o in layers.values())
    assert layers["ttp"]["unit"] == "min" and layers["slope"]["unit"] == "SUV/h"
    assert layers["ttp"]["url"] == reverse("quantification:map", args=[exam.pk, "ttp"])

    tumour = next(c for c in config["tac"]["curves"] if c["key"] == "tumor")
    np.testing.assert_allclose(tumour["t_min"], np.asarray(quant.tacs["tumor"]["mid_times_s"]) / 60, atol=1e-3)
    np.testing.assert_allclose(tumour["values"], quant.tacs["tumor"]["values"], atol=1e-3)
    assert config["tac"]["x_unit"] == "min" and config["tac"]["y_unit"] == "SUV"
    assert {c["key"] for c in config["tac"]["curves"]} >= {"tumor", "background"}

    dyn = exam.volumes.get(kind="pet_dynamic", space="common")
    assert config["dynamic"]["url"] == reverse("cohorts:volume-file", args=[dyn.pk])
    mid = (np.asarray(dyn.frame_start_s) + np.asarray(dyn.frame_duration_s) / 2) / 60
    np.testing.assert_allclose(config["dynamic"]["frames_mid_min"], mid, atol=1e-3)
    assert len(config["dynamic"]["frames_mid_min"]) == dyn.shape[3]


def test_config_reveals_no_site_patient_day_or_file_name(prepared_exam):
    exam, _, _ = prepared_exam
    config = exam_viewer_config(exam, url_for=_opaque_url_for, heatmap_url="/r/heatmap/123/")
    text = json.dumps(config)
    patient = exam.patient
    secrets = {patient.site.name, patient.site.display_name, patient.code, f"ses-{exam.code}",
               f"day {exam.day}", str(exam.created_at.date())}
    for obj in [*exam.volumes.all(), *exam.masks.all()]:
        secrets |= {obj.file.name, obj.file.name.rsplit("/", 1)[-1], obj.sha256}
        if obj.source_name:
            secrets.add(obj.source_name)
    leaked = sorted(s for s in secrets if s and s in text)
    assert not leaked, leaked
    assert not re.search(r'"(site|patient|day|date|exam|code|source_name)"\s*:', text)
    filenames = [v["filename"] for v in [*config["volumes"], *config["bases"], *config["overlays"],
                                         config["dynamic"]]]
    assert set(filenames) <= NEUTRAL_FILENAMES
    # the heat map is offered, hidden, with its meaning, at the URL the reading page gave
    heat = next(o for o in config["overlays"] if o["key"] == "heatmap")
    assert heat["url"] == "/r/heatmap/123/" and heat["visible"] is False and "not a probability" in heat["description"]


def _store(array: np.ndarray, dtype=np.float32) -> str:
    return StoreTransaction().put_bytes(nifti_bytes(array, common_grid().affine, dtype=dtype),
                                        category="common", suffix=".nii.gz")[0]


def _small_common_exam(*, hot: tuple[int, int, int]):
    """An exam with common-grid-like T1c, PET (SUV) and tumour/background masks on 12^3 voxels."""
    shape = (12, 12, 12)
    pet = np.full(shape, 1.0, np.float32)
    pet[hot] = 5.0
    pet[3, 3, 3] = 9.0  # hotter, but outside the tumour: must not be chosen
    tumor = np.zeros(shape, np.uint8)
    tumor[6:11, 6:11, 6:11] = 1
    background = np.zeros(shape, np.uint8)
    background[0:3, 6:9, 6:9] = 1
    exam = ExamFactory()
    common = {"shape": list(shape), "affine": common_grid().affine.tolist(), "space": "common"}
    VolumeFactory(exam=exam, kind="t1c", units="", file=_store(np.ones(shape, np.float32)), **common)
    pet_vol = VolumeFactory(exam=exam, kind="pet_static", units="SUV", file=_store(pet), **common)
    MaskFactory(grid=pet_vol, exam=exam, kind="tumor", space="common", file=_store(tumor, np.uint8))
    MaskFactory(grid=pet_vol, exam=exam, kind="background", space="common", file=_store(background, np.uint8))
    return exam


def test_rows_quantified_before_fall_back_to_mask_and_pet():
    hot = (8, 7, 9)
    exam = _small_common_exam(hot=hot)
    expected = (common_grid().affine @ np.array([*hot, 1.0]))[:3]

    # not quantified at all: lesion, SUVmax and background measured on the common grid
    config = exam_viewer_config(exam, url_for=exam_page_url)
    np.testing.assert_allclose(config["crosshair"], expected)
    assert config["lesion"]["source"] == "mask" and config["lesion"]["suv_max"] == 5.0
    assert config["lesion"]["displayed_suv_max"] == 5.0
    assert config["volumes"][1]["cal_min"] == pytest.approx(1.6) and config["volumes"][1]["cal_max"] == 5.0
    assert "tac" not in config and "dynamic" not in config
    assert [o["key"] for o in config["overlays"]] == ["voi"]

    # quantified before lesion_mm existed: position from the mask, window from the stored numbers
    ExamQuantificationFactory(exam=exam, suv_max=4.0, config={"static": {"background_mean": 2.0}})
    exam = Exam.objects.get(pk=exam.pk)
    config = exam_viewer_config(exam, url_for=exam_page_url)
    np.testing.assert_allclose(config["crosshair"], expected)
    assert config["volumes"][1]["cal_min"] == pytest.approx(3.2) and config["volumes"][1]["cal_max"] == 4.0
    # the page says what the crosshair reads at the lesion beside the SUVmax of its table
    client = Client()
    client.force_login(user_with("coordinator", exam.patient.site))
    text = " ".join(client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode().split())
    assert "The crosshair reads 5.00 SUV there" in text and "the SUVmax below (4.00)" in text

    # a tumour below TBR 1.6: the window still has a valid upper end
    exam.quantification.suv_max = 2.5
    exam.quantification.save()
    pet = exam_viewer_config(Exam.objects.get(pk=exam.pk), url_for=exam_page_url)["volumes"][1]
    assert pet["cal_min"] == pytest.approx(3.2) and pet["cal_max"] == pytest.approx(5.0)
    assert "below" in pet["window_basis"]


def test_no_common_pet_means_no_viewer_and_the_page_says_why():
    exam = ExamFactory()
    VolumeFactory(exam=exam, kind="pet_static", space="native")
    assert exam_viewer_config(exam, url_for=exam_page_url) is None
    client = Client()
    client.force_login(user_with("coordinator", exam.patient.site))
    html = client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode()
    assert "data-aminopet-viewer" not in html and "prepared on the common grid" in html


def test_exam_page_embeds_the_config_as_json_without_inline_script():
    exam = _small_common_exam(hot=(7, 7, 7))
    client = Client()
    client.force_login(user_with("coordinator", exam.patient.site))
    html = client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode()
    assert html.count("data-aminopet-viewer") == 1
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    inline = [attrs for attrs, body in scripts if body.strip() and 'type="application/json"' not in attrs]
    assert not inline, inline
    payload = next(body for attrs, body in scripts if 'type="application/json"' in attrs)
    assert json.loads(payload) == exam_viewer_config(exam, url_for=exam_page_url)
    assert re.search(r'<script src="/static/aminopet/viewer(\.[0-9a-f]+)?\.js" defer>', html)
