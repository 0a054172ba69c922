"""The names of the audit trail's events, one enum for every layer that records them (the Storage SCP
below the node records associations and refusals; the node the rest). The values are what the
database's `audit_events.event` column, the JSON log and `dfnode audit --event` carry."""

from __future__ import annotations

from enum import StrEnum


class AuditEventName(StrEnum):
    ASSOCIATION_ACCEPTED = "association.accepted"
    ASSOCIATION_REJECTED = "association.rejected"
    INSTANCE_STORED = "instance.stored"
    INSTANCE_REFUSED = "instance.refused"
    TLS_REFUSED = "tls.refused"
    SERIES_NEW = "series.new"
    SERIES_EVALUATING = "series.evaluating"
    SERIES_NOT_EVALUATED = "series.not_evaluated"
    REPORT_CREATED = "report.created"
    DELIVERY_SENT = "delivery.sent"
    DELIVERY_RETRY = "delivery.retry"
    DELIVERY_FAILED = "delivery.failed"
    RETENTION_PURGED = "retention.purged"
    NODE_STARTED = "node.started"
    NODE_STOPPED = "node.stopped"
    CONSOLE_SIGNIN = "console.signin"
    CONSOLE_SIGNIN_REFUSED = "console.signin_refused"
    CONSOLE_ADMIN_CREATED = "console.admin_created"
    CONSOLE_UNMASKED = "console.unmasked"
    CONSOLE_RETRY = "console.retry"
    CONSOLE_CHECK = "console.check"
