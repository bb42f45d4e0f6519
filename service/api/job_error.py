"""The schema of a job's error, as the jobs API, the cron runs and the dashboard's failures show it."""

from __future__ import annotations

from marshmallow import Schema, fields

__all__ = ["ErrorSchema"]


class ErrorSchema(Schema):
    """A job's error as ``jobs.serialization`` stores it: its exception's type name and message."""

    type = fields.String(required=True)
    message = fields.String(required=True)
