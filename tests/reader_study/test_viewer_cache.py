"""The case viewer configuration is computed once per exam and kept (per process), with URLs signed
for each reader, case and arm on every request; a changed exam is seen at once; the combined
reader + assignment lookup (one call) answers as the two separate ones do."""
from __future__ import annotations

import pytest
from django.http import Http404

from reader_study import selectors
from reader_study.signing import image_token_verify
from tests.factories import VolumeFactory

pytestmark = pytest.mark.django_db


def _urls(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "url"] + [u for v in node.values() for u in _urls(v)]
    if isinstance(node, list):
        return [u for v in node for u in _urls(v)]
    return []


def _without_urls(node):
    if isinstance(node, dict):
        return {k: _without_urls(v) for k, v in node.items() if k != "url"}
    if isinstance(node, list):
        return [_without_urls(v) for v in node]
    return node


def test_cached_configuration_is_signed_per_reader_and_arm(open_world, django_assert_max_num_queries):
    w = open_world
    r1, r2 = (w["study"].readers.get(user=u) for u in w["readers"][:2])
    case = w["study"].cases.order_by("code").first()
    first = selectors.case_viewer_config(r1, case, "unaided")
    assert first is not None and first["volumes"]
    with django_assert_max_num_queries(0):  # cached: no volume, mask or quantification read
        again = selectors.case_viewer_config(r1, case, "unaided")
        other = selectors.case_viewer_config(r2, case, "unaided")
    assert _without_urls(again) == _without_urls(first) == _without_urls(other)
    urls_1, urls_2 = _urls(first), _urls(other)
    assert urls_1 and len(urls_1) == len(urls_2) and not set(urls_1) & set(urls_2)
    assert not any("signed-image:" in u for u in urls_1 + urls_2)
    for url, reader in [(urls_1[0], r1), (urls_2[0], r2)]:
        grant = image_token_verify(url.rstrip("/").rsplit("/", 1)[1])
        assert (grant.reader_id, grant.case_id, grant.arm) == (reader.pk, case.pk, "unaided")


def test_a_changed_exam_is_seen_at_once(open_world):
    w = open_world
    reader = w["study"].readers.get(user=w["readers"][0])
    case = w["study"].cases.order_by("code").first()
    before = selectors.case_viewer_config(reader, case, "unaided")
    assert [b["name"] for b in before["bases"]] == ["T1c"]
    VolumeFactory(exam=case.exam, kind="flair", space="common", units="")
    after = selectors.case_viewer_config(reader, case, "unaided")
    assert [b["name"] for b in after["bases"]] == ["T1c", "FLAIR"]


def test_a_change_saved_by_another_process_is_seen_through_the_cache(open_world):
    """Another process (a worker re-preparing the exam) saves and bumps the cache's count, not this
    process's: with a shared cache (CACHE_URL) this process sees the change at once."""
    from django.core.cache import cache

    from apps.cohorts.models import Volume

    w = open_world
    reader = w["study"].readers.get(user=w["readers"][0])
    case = w["study"].cases.order_by("code").first()
    assert [b["name"] for b in selectors.case_viewer_config(reader, case, "unaided")["bases"]] == ["T1c"]
    t1c = Volume.objects.get(exam=case.exam, kind="t1c", space="common")
    flair = Volume(exam=case.exam, kind="flair", space="common", units="", file=t1c.file.name,
                   sha256=t1c.sha256, shape=t1c.shape, voxel_size=t1c.voxel_size, affine=t1c.affine)
    Volume.objects.bulk_create([flair])  # no signal in this process: the other process saved it
    assert [b["name"] for b in selectors.case_viewer_config(reader, case, "unaided")["bases"]] == ["T1c"]
    cache.incr(selectors._GENERATION_KEY) if cache.get(selectors._GENERATION_KEY) is not None \
        else cache.set(selectors._GENERATION_KEY, 1, None)  # what its cached_data_changed does
    assert [b["name"] for b in selectors.case_viewer_config(reader, case, "unaided")["bases"]] == ["T1c", "FLAIR"]


def test_joined_lookup_answers_as_the_separate_ones(open_world):
    w = open_world
    user = w["readers"][0]
    slug = w["study"].slug
    own = selectors.study_reader_for(user, slug)
    for case in w["study"].cases.all():
        codes = set(own.sessions.values_list("assignments__case__code", flat=True))
        for arm in ("unaided", "aided"):
            if case.code not in codes:
                with pytest.raises(Http404):
                    selectors.reader_assignment_for(user, slug, case.code, arm)
                continue
            reader, assignment = selectors.reader_assignment_for(user, slug, case.code, arm)
            expected = selectors.assignment_for(own, case.code, arm)
            assert reader.pk == own.pk and assignment.pk == expected.pk
            assert assignment.n_session_cases == expected.n_session_cases
    with pytest.raises(Http404):
        selectors.reader_assignment_for(user, slug, "NOPE", "unaided")
    with pytest.raises(Http404):
        selectors.reader_assignment_for(user, slug, w["study"].cases.first().code, "both")
    with pytest.raises(Http404):  # a user who is not a reader of the study
        selectors.reader_assignment_for(w["coordinator"], slug, w["study"].cases.first().code, "unaided")
