"""REST API of the reader study, with the same checks as the pages.

- ``/api/studies/`` (coordinators): the studies they manage, with progress; ``POST .../open/`` and
  ``.../close/``.
- ``/api/worklist/<slug>/`` (readers): their sessions and cases (codes, which arms are answered).
- ``/api/worklist/<slug>/cases/<code>/<arm>/`` (readers): ``GET`` opens the case in that arm (server
  ``opened_at``) and returns the viewer configuration with signed image URLs and, in the aided arm
  only, the AI output; ``POST`` submits the answer once (409 when already answered or locked).
"""
from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.permissions import MANAGE_ROLES, RolePermission
from reader_study import selectors, services
from reader_study.models import Arm, Design, Study
from reader_study.serializers import AnswerSerializer, StudySerializer


def _error(code: str, message: str, http: int) -> Response:
    return Response({"error": {"code": code, "message": message, "details": {}}}, status=http)


class StudyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Studies the coordinator manages (created, or on a cohort of their sites)."""

    serializer_class = StudySerializer
    permission_classes = [RolePermission]
    required_roles = MANAGE_ROLES
    lookup_field = "slug"
    queryset = Study.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):
        return selectors.studies_managed(self.request.user)

    def _transition(self, request, service):
        study = self.get_object()
        try:
            study = service(study=study, user=request.user, request=request)
        except services.StudyError as exc:
            return _error("invalid_state", str(exc), status.HTTP_409_CONFLICT)
        return Response(StudySerializer(study).data)

    @extend_schema(request=None, responses=StudySerializer)
    @action(detail=True, methods=["post"])
    def open(self, request, slug=None):
        return self._transition(request, services.study_open)

    @extend_schema(request=None, responses=StudySerializer)
    @action(detail=True, methods=["post"])
    def close(self, request, slug=None):
        return self._transition(request, services.study_close)


class _ReaderAPI(APIView):
    permission_classes = [RolePermission]
    required_roles = (Role.READER,)


class WorklistAPI(_ReaderAPI):
    @extend_schema(responses=dict)
    def get(self, request, slug):
        reader = selectors.study_reader_for(request.user, slug)
        done, total = selectors.reader_progress(reader)
        nxt = selectors.next_reading(reader)
        return Response({
            "study": {"slug": reader.study.slug, "title": reader.study.title, "question": reader.study.question,
                      "status": reader.study.status, "design": reader.study.design},
            "done": done, "total": total, "next": {"case": nxt[0], "arm": nxt[1]} if nxt else None,
            "sessions": [{
                "number": ws.session.number, "arm": ws.session.arm or "both", "state": ws.state,
                "opens_at": ws.session.opens_at, "done": ws.done, "total": ws.total,
                "cases": [{"position": r.position, "case": r.code,
                           "arms": {arm: state for arm, _, state in r.arms}} for r in ws.rows],
            } for ws in selectors.worklist(reader)],
        })


class ReadingCaseAPI(_ReaderAPI):
    def _assignment(self, request, slug, code, arm, *, with_size: bool = True):
        return selectors.reader_assignment_for(request.user, slug, code, arm, with_size=with_size)

    @extend_schema(responses=dict)
    def get(self, request, slug, code, arm):
        reader, assignment = self._assignment(request, slug, code, arm)
        readings = services.case_readings(reader, assignment.case)  # both arms, one query
        if arm in readings and readings[arm].is_submitted:
            return _error("locked", "this case was already answered in this arm", status.HTTP_409_CONFLICT)
        try:
            # the study's status as read with the reader a moment ago, in this request
            reading = services.reading_open(assignment=assignment, arm=arm, user=request.user, request=request,
                                            readings=readings, study_status=reader.study.status)
        except services.ReadingLocked as exc:
            return _error("permission_denied", str(exc), status.HTTP_403_FORBIDDEN)
        case = assignment.case
        prediction = selectors.ai_prediction(reader.study, case) if arm == Arm.AIDED else None
        ai = selectors.ai_panel(reader, case, arm, assignment=assignment, prediction=prediction,
                                refusal_checked=True)
        if ai is not None:
            ai = {**ai, "features": [asdict(f) | {"text": f.text} for f in ai["features"]]}
        position, n = selectors.reading_position(assignment)
        return Response({
            "case": case.code, "arm": arm, "position": position, "n_cases": n,
            "session": assignment.session.number, "opened_at": reading.opened_at,
            "question": reader.study.question, "rating_scale": reader.study.rating_scale,
            "viewer": selectors.case_viewer_config(reader, case, arm, prediction=prediction), "ai": ai,
        })

    @extend_schema(request=AnswerSerializer, responses=dict)
    def post(self, request, slug, code, arm):
        reader, assignment = self._assignment(request, slug, code, arm, with_size=False)  # no position shown
        serializer = AnswerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        readings = services.case_readings(reader, assignment.case)  # both arms, one query
        reading = readings.get(arm)
        if reading is None:
            return _error("not_opened", "open the case (GET) before answering it", status.HTTP_409_CONFLICT)
        reading.reader, reading.case = reader, assignment.case  # the rows it was looked up by
        if reading.assignment_id == assignment.pk:
            reading.assignment = assignment
        unaided = readings.get(Arm.UNAIDED)
        # the study's status is read again under the session lock by reading_submit
        reason = services.arm_refusal(assignment=assignment, arm=arm, study_status=reader.study.status,
                                      unaided_submitted=bool(unaided is not None and unaided.is_submitted))
        if reason and not reading.is_submitted:
            return _error("permission_denied", reason, status.HTTP_403_FORBIDDEN)
        answer = dict(serializer.validated_data)
        active = answer.pop("active_seconds", None)
        try:
            reading = services.reading_submit(reading=reading, answer=answer, user=request.user,
                                              active_seconds=active, request=request)
        except services.ReadingLocked as exc:
            return _error("locked", str(exc), status.HTTP_409_CONFLICT)
        except services.StudyError as exc:
            return _error("invalid", str(exc), status.HTTP_400_BAD_REQUEST)
        # a sequential or split-plot reader has one session, the one just answered in (its completion
        # stamped by the submit); a crossover reader's two are read again (a completion starts the next
        # session's washout)
        sessions = None if reader.study.design == Design.CROSSOVER else [reading.assignment.session]
        nxt = selectors.next_reading(reader, sessions=sessions)
        return Response({"case": code, "arm": arm, "submitted_at": reading.submitted_at,
                         "next": {"case": nxt[0], "arm": nxt[1]} if nxt else None}, status=status.HTTP_201_CREATED)
