"""DICOM import of a generated exam exported with realistic headers: orientation, SUV, frames,
de-identification, and clear errors with nothing changed."""
from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.management import CommandError, call_command

from apps.cohorts.models import Exam, Patient, Volume
from ml.phantoms import export_exam_dicom, make_exam

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    exam = make_exam(seed=3, site=1, timepoint="suspected_recurrence")
    out = tmp_path_factory.mktemp("dicom")
    export_exam_dicom(exam, out, series=("pet_static", "pet_dynamic", "t1c"))
    return exam, out


def _world_value(array, affine, mm):
    ijk = np.round(np.linalg.inv(affine) @ np.append(mm, 1.0))[:3].astype(int)
    return array[tuple(ijk)]


def test_import_dicom_study(exported, settings):
    exam, folder = exported
    call_command("import_dicom", str(folder), "--site", "lyon", "--patient", "P9", "--exam", "rec1",
                 "--timepoint", "suspected_recurrence", "--day", "120", "--quiet", "--no-prepare")
    stored = Exam.objects.get(patient__code="P9", code="rec1")
    assert stored.timepoint == "suspected_recurrence" and stored.day == 120
    kinds = set(stored.volumes.values_list("kind", flat=True))
    assert kinds == {"pet_static", "pet_dynamic", "t1c"}
    pet = stored.volumes.get(kind="pet_static")
    assert pet.units == "SUV"
    img = nib.load(Path(settings.MEDIA_ROOT) / pet.file.name)
    data = np.asarray(img.dataobj)
    truth = exam.pet_static.data * exam.suv_factor  # the generator's own SUV
    # same world position -> same SUV (int16 storage rounding only)
    centre = exam.pet_static.affine @ np.array([*(np.array(truth.shape) // 2), 1.0])
    hot = np.unravel_index(np.argmax(truth), truth.shape)
    hot_mm = (exam.pet_static.affine @ np.array([*hot, 1.0]))[:3]
    for mm in (centre[:3], hot_mm):
        assert _world_value(data, img.affine, mm) == pytest.approx(
            _world_value(truth, exam.pet_static.affine, mm), rel=2e-3, abs=2e-3)
    dyn = stored.volumes.get(kind="pet_dynamic")
    assert len(dyn.frame_start_s) == dyn.shape[3] == exam.pet_dynamic.data.shape[3]
    assert np.allclose(dyn.frame_start_s, exam.frame_start_s, atol=1.0)
    # de-identified: no name, ID or birth date anywhere in what was stored
    for vol in stored.volumes.all():
        text = str(vol.metadata)
        assert "Synthetic^" not in text and "PatientBirthDate" not in text
        assert exam.labels.participant_id.removeprefix("sub-") not in text


def test_reimport_same_study_changes_nothing(exported):
    _, folder = exported
    args = [str(folder), "--site", "lyon", "--patient", "P9", "--exam", "rec1", "--quiet", "--no-prepare"]
    call_command("import_dicom", *args)
    before = list(Volume.objects.values_list("pk", "sha256"))
    call_command("import_dicom", *args)
    assert list(Volume.objects.values_list("pk", "sha256")) == before


def test_missing_slice_is_refused(exported, tmp_path, settings):
    _, folder = exported
    archive = tmp_path / "study.zip"
    files = sorted((folder).rglob("*.dcm")) or sorted(p for p in folder.rglob("*") if p.is_file())
    static = sorted(p for p in files if "static" in str(p).lower() or p.parent == files[0].parent)
    drop = static[len(static) // 2]
    with zipfile.ZipFile(archive, "w") as zf:
        for p in files:
            if p != drop:
                zf.write(p, p.relative_to(folder))
    with pytest.raises(CommandError) as info:
        call_command("import_dicom", str(archive), "--site", "lyon", "--patient", "P8", "--exam", "x", "--quiet")
    assert "slice" in str(info.value).lower()
    assert Patient.objects.count() == 0 and Volume.objects.count() == 0
    assert not [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]


def test_not_dicom_is_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(CommandError, match="a.dcm|DICOM"):
        call_command("import_dicom", str(tmp_path / "junk"), "--site", "lyon", "--patient", "P7", "--exam", "x",
                     "--quiet")
    assert Patient.objects.count() == 0


def test_study_without_pet_is_refused_and_creates_nothing(tmp_path, settings):
    exam = make_exam(seed=5, site=0, timepoint="initial_diagnosis")
    export_exam_dicom(exam, tmp_path / "mr", series=("t1c",))
    with pytest.raises(CommandError) as info:
        call_command("import_dicom", str(tmp_path / "mr"), "--site", "lyon", "--patient", "P6", "--exam", "x",
                     "--quiet", "--no-prepare")
    assert "no PET series" in str(info.value) and "MR" in str(info.value)
    assert Patient.objects.count() == 0 and Exam.objects.count() == 0 and Volume.objects.count() == 0
    assert not [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]


def test_mr_series_may_join_an_exam_that_has_its_pet(exported, tmp_path):
    exam, folder = exported
    call_command("import_dicom", str(folder), "--site", "lyon", "--patient", "P9", "--exam", "rec1",
                 "--quiet", "--no-prepare")
    export_exam_dicom(exam, tmp_path / "flair", series=("flair",))
    call_command("import_dicom", str(tmp_path / "flair"), "--site", "lyon", "--patient", "P9", "--exam", "rec1",
                 "--quiet", "--no-prepare")
    assert "flair" in set(Exam.objects.get(code="rec1").volumes.values_list("kind", flat=True))


def test_date_shift_is_not_stored_and_the_import_is_audited(exported):
    from apps.audit.models import AuditEvent

    _, folder = exported
    call_command("import_dicom", str(folder), "--site", "lyon", "--patient", "P9", "--exam", "rec1",
                 "--quiet", "--no-prepare")
    pet = Volume.objects.get(kind="pet_static")
    assert "date_shift_days" not in pet.metadata
    # the dates are shifted (the export writes real-looking dates), by a secret the rows do not hold
    original = next(p for p in sorted(folder.rglob("*")) if p.is_file())
    import pydicom

    study_date = str(pydicom.dcmread(original, stop_before_pixels=True).StudyDate)
    assert pet.metadata["study_date"] and pet.metadata["study_date"] != study_date
    event = AuditEvent.objects.get(action="import.run")
    assert event.details["kind"] == "dicom" and event.details["file"] == folder.name
    assert set(event.details["created"]) == {"pet_static", "pet_dynamic", "t1c"}


def test_scrub_removes_a_date_shift_stored_by_earlier_imports():
    import io

    from tests.factories import VolumeFactory

    old = VolumeFactory(metadata={"study_date": "20231123", "date_shift_days": -40, "modality": "PT"})
    clean = VolumeFactory(metadata={"study_date": "20231123", "modality": "PT"})
    out = io.StringIO()
    call_command("scrub_date_shift", stdout=out)
    assert "from 1 volumes" in out.getvalue()
    old.refresh_from_db()
    clean.refresh_from_db()
    assert old.metadata == {"study_date": "20231123", "modality": "PT"} == clean.metadata
    call_command("scrub_date_shift", stdout=out)
    assert "from 0 volumes" in out.getvalue()
