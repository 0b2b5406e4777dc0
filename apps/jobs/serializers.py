from rest_framework import serializers

from apps.jobs.models import Job


class JobSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None, allow_null=True)

    class Meta:
        model = Job
        fields = ["id", "kind", "status", "progress", "message", "params", "result", "created_by",
                  "created_at", "started_at", "finished_at", "attempts", "worker", "heartbeat_at"]
        read_only_fields = fields
