"""Reader-study pages: the reader's case page (blinding, locks, signed de-identified images) and the
coordinator's create / open / close."""
from __future__ import annotations

import gzip
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest
from django.core import signing
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.cohorts.models import Volume
from apps.cohorts.services.store import StoreTransaction
from reader_study import signing as rs_signing
from reader_study.models import Assignment, Reading, Study

pytestmark = pytest.mark.django_db


def _first(world, user):
    a = Assignment.objects.filter(session__reader__user=user).select_related("case").order_by("position").first()
    return a, reverse("reader_study:case", args=[world["study"].slug, a.case.code, "unaided"]), \
        reverse("reader_study:case", args=[world["study"].slug, a.case.code, "aided"])


def _image_urls(html: str) -> list[str]:
    config = re.search(r'<script[^>]*type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1)
    data = json.loads(config)
    return [v["url"] for key in ("volumes", "overlays") for v in data.get(key, [])]


ANSWER = {"decision": "1", "confidence": "70", "comment": "", "active_seconds": "12.5"}
AIDED = {**ANSWER, "ai_agreement": "agree", "explanation_usefulness": "4"}


def test_reader_reads_a_sequential_case(client, open_world):
    w = open_world
    user = w["readers"][0]
    client.force_login(user)
    a, unaided, aided = _first(w, user)
    # the aided arm is refused before the unaided answer, and shows nothing of the AI
    response = client.get(aided)
    assert response.status_code == 403
    assert b"probability" not in response.content and b"AI decision" not in response.content
    response = client.get(unaided)
    assert response.status_code == 200
    html = response.content.decode()
    assert a.case.code in html and "AI decision" not in html and "towards" not in html
    exam = a.case.exam
    for leak in (exam.patient.code, exam.patient.site.name, f"/cohort/exams/{exam.pk}/", exam.code):
        assert leak not in html, leak
    urls = _image_urls(html)
    assert urls and all(u.startswith("/studies/images/") for u in urls)
    response = client.post(unaided, ANSWER)
    assert response.status_code == 302 and response.url == aided
    reading = Reading.objects.get(reader__user=user, case=a.case, arm="unaided")
    assert (reading.decision, reading.confidence) == (True, 70)
    assert 0 <= reading.active_seconds <= 12.5
    # a second submit (double click, back button) stores nothing more
    response = client.post(unaided, {**ANSWER, "decision": "0", "confidence": "5"})
    assert response.status_code == 302
    reading.refresh_from_db()
    assert (reading.decision, reading.confidence) == (True, 70)
    html = client.get(aided).content.decode()
    assert "AI decision" in html and "T/S max</span> 2.40" in html and "towards <strong>progression" in html
    assert "log-odds" not in html and "ts_max" not in html and "Research use only" in html
    assert "truth" not in html.lower() and "reference standard" not in html.lower()
    response = client.post(aided, {**ANSWER, "confidence": "90"})  # agreement and usefulness missing
    assert response.status_code == 400
    response = client.post(aided, AIDED)
    assert response.status_code == 302 and response.url == reverse("reader_study:next", args=[w["study"].slug])
    assert Reading.objects.filter(reader__user=user, submitted_at__isnull=False).count() == 2
    assert AuditEvent.objects.filter(action="reading.open", actor_id=user.pk).count() >= 2


def test_worklist_shows_progress_and_next(client, open_world):
    w = open_world
    user = w["readers"][0]
    client.force_login(user)
    html = client.get(reverse("reader_study:worklist", args=[w["study"].slug])).content.decode()
    assert "0 / 6" in html and "Start reading" in html
    a, unaided, _ = _first(w, user)
    response = client.get(reverse("reader_study:next", args=[w["study"].slug]))
    assert response.url == unaided


def test_images_are_signed_for_one_reader_and_deidentified(client, open_world, settings):
    w = open_world
    user, other_user = w["readers"]
    a, unaided, _ = _first(w, user)
    # put identifying text in the stored PET header, as a careless converter would
    pet = Volume.objects.get(exam=a.case.exam, kind="pet_static", space="common")
    image = nib.Nifti1Image(np.full((8, 8, 8), 2.5, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header["descrip"] = f"{a.case.exam.patient.site.name} {a.case.exam.patient.code}".encode()
    image.header["aux_file"] = b"sub-P001_ses-01_pet.nii"
    buf = io.BytesIO()
    image.to_file_map(image.make_file_map({"image": buf, "header": buf}))
    name, sha = StoreTransaction().put_bytes(gzip.compress(buf.getvalue()), category="volumes", suffix=".nii.gz")
    Volume.objects.filter(pk=pet.pk).update(file=name, sha256=sha)

    client.force_login(user)
    urls = _image_urls(client.get(unaided).content.decode())
    pet_url = next(u for u in urls if "images" in u and client.get(u).status_code == 200
                   and rs_signing.image_token_verify(u.split("/")[-2]).what == "pet_static")
    body = b"".join(client.get(pet_url).streaming_content)
    raw = gzip.decompress(body)
    for leak in (a.case.exam.patient.code.encode(), a.case.exam.patient.site.name.encode(), b"sub-P001"):
        assert leak not in raw
    served = nib.Nifti1Image.from_bytes(raw)
    assert np.allclose(served.get_fdata(), 2.5) and np.allclose(served.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    # another reader of the same study cannot use the link
    client.force_login(other_user)
    assert client.get(pet_url).status_code == 404
    # tampered and expired links
    client.force_login(user)
    token = pet_url.split("/")[-2]
    assert client.get(reverse("reader_study:image", args=[token[:-2] + "xx"])).status_code == 403
    forged = signing.TimestampSigner(salt="other").sign_object({"r": 1, "c": 1, "a": "unaided", "w": "t1c"})
    assert client.get(reverse("reader_study:image", args=[forged])).status_code == 403
    settings_max = rs_signing.IMAGE_URL_MAX_AGE_S
    try:
        rs_signing.IMAGE_URL_MAX_AGE_S = -1
        with pytest.raises(rs_signing.ImageTokenError, match="expired"):
            rs_signing.image_token_verify(token, max_age=-1)
    finally:
        rs_signing.IMAGE_URL_MAX_AGE_S = settings_max
    # an aided-arm link signed before the unaided answer is refused; what readers never see is 404
    reader = w["study"].readers.get(user=user)
    aided_token = rs_signing.image_token_make(reader_id=reader.pk, case_id=a.case.pk, arm="aided", what="pet_static")
    assert client.get(reverse("reader_study:image", args=[aided_token])).status_code == 403
    for what in ("mask:aggressive", "pet_static/../t1", "heatmap"):
        token = rs_signing.image_token_make(reader_id=reader.pk, case_id=a.case.pk, arm="unaided", what=what)
        assert client.get(reverse("reader_study:image", args=[token])).status_code == 404


def test_expired_image_link_answers_403(client, open_world, monkeypatch):
    w = open_world
    user = w["readers"][0]
    a, unaided, _ = _first(w, user)
    client.force_login(user)
    url = _image_urls(client.get(unaided).content.decode())[0]
    monkeypatch.setattr(rs_signing, "IMAGE_URL_MAX_AGE_S", 2 * 3600)
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3 * 3600)
    assert client.get(url).status_code == 403


def test_reader_outside_the_study_gets_404(client, open_world):
    w = open_world
    from tests.factories import user_with

    outsider = user_with("reader", w["home"])
    client.force_login(outsider)
    a, unaided, _ = _first(w, w["readers"][0])
    assert client.get(unaided).status_code == 404
    assert client.get(reverse("reader_study:worklist", args=[w["study"].slug])).status_code == 404
    url = _image_urls(_page_as(client, w["readers"][0], unaided))[0]
    client.force_login(outsider)
    assert client.get(url).status_code == 404


def _page_as(client, user, url):
    client.force_login(user)
    return client.get(url).content.decode()


def test_coordinator_creates_opens_and_closes_a_study(client, world):
    w = world
    client.force_login(w["coordinator"])
    response = client.post(reverse("reader_study:create"), {
        "title": "FET recurrence", "question": "Progression?", "task": "progression", "design": "sequential",
        "washout_days": "0", "rating_scale": "confidence", "cohort": w["cohort"].name, "n_cases": "4",
        "model_version": str(w["model"].pk), "readers": [str(u.pk) for u in w["readers"]], "sus": "on",
        "trust_items": "I trust it.\nIt helps.", "seed": "5",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    study = Study.objects.get(title="FET recurrence")
    assert study.status == "draft" and study.cases.count() == 4 and study.readers.count() == 2
    assert study.questionnaire == {"sus": True, "trust_items": ["I trust it.", "It helps."]}
    detail = reverse("reader_study:detail", args=[study.slug])
    assert client.get(detail).status_code == 200
    client.post(reverse("reader_study:open", args=[study.slug]))
    study.refresh_from_db()
    assert study.status == "open" and Assignment.objects.filter(session__reader__study=study).count() == 8
    html = client.get(detail).content.decode()
    assert "0 / 8" in html and reverse("reader_study:worklist", args=[study.slug]) in html
    client.post(reverse("reader_study:close", args=[study.slug]))
    study.refresh_from_db()
    assert study.status == "closed"
    assert {"study.create", "study.cases_set", "study.readers_set", "study.open", "study.close"} <= set(
        AuditEvent.objects.filter(object_id=str(study.pk), object_type="reader_study.study")
        .values_list("action", flat=True))


def test_create_with_bad_input_keeps_nothing(client, world):
    client.force_login(world["coordinator"])
    n = Study.objects.count()
    response = client.post(reverse("reader_study:create"), {
        "title": "Bad", "question": "?", "task": "progression", "design": "sequential", "washout_days": "0",
        "rating_scale": "confidence", "cohort": world["cohort"].name, "n_cases": "60",
        "model_version": str(world["model"].pk), "readers": [str(world["readers"][0].pk)]})
    assert response.status_code == 400 and "60 cases asked" in response.content.decode()
    assert Study.objects.count() == n


def test_edit_is_refused_once_reading_started(client, open_world):
    w = open_world
    client.force_login(w["readers"][0])
    _, unaided, _ = _first(w, w["readers"][0])
    client.get(unaided)
    client.force_login(w["coordinator"])
    edit = reverse("reader_study:edit", args=[w["study"].slug])
    assert "design is locked" in client.get(edit).content.decode()
    data = {"title": "Changed", "question": "?", "task": "progression", "design": "crossover", "washout_days": "0",
            "rating_scale": "confidence", "cohort": w["cohort"].name, "model_version": str(w["model"].pk),
            "readers": [str(u.pk) for u in w["readers"]]}
    response = client.post(edit, data)
    assert response.status_code == 400
    w["study"].refresh_from_db()
    assert (w["study"].title, w["study"].design) != ("Changed", "crossover")
