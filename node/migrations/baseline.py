"""The schema as it stood when the node began to use migrations (revision 0001), frozen here: the
baseline migration creates it, and a database made before migrations is completed to it."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

BASELINE_REVISION = "0001"


def baseline_metadata() -> MetaData:
    metadata = MetaData()
    Table("series", metadata,
          Column("id", Integer, primary_key=True),
          Column("series_uid", String(64), nullable=False, unique=True),
          Column("study_uid", String(64), nullable=False, index=True),
          Column("patient_id", String(64), nullable=False),
          Column("modality", String(16), nullable=False),
          Column("body_part", String(64), nullable=False),
          Column("description", String(128), nullable=False),
          Column("calling_ae", String(16), nullable=False),
          Column("route", String(64)),
          Column("model", String(64)),
          Column("first_received_at", Float, nullable=False),
          Column("last_received_at", Float, nullable=False, index=True),
          Column("instance_count", Integer, nullable=False),
          Column("received_version", Integer, nullable=False),
          Column("evaluated_version", Integer, nullable=False),
          Column("score", Float),
          Column("verdict", String(16)),
          Column("error", Text))
    Table("instances", metadata,
          Column("id", Integer, primary_key=True),
          Column("sop_instance_uid", String(64), nullable=False, unique=True),
          Column("sop_class_uid", String(64), nullable=False),
          Column("series_id", Integer, ForeignKey("series.id"), nullable=False, index=True),
          Column("path", Text, nullable=False),
          Column("size", BigInteger, nullable=False),
          Column("transfer_syntax", String(64), nullable=False),
          Column("received_at", Float, nullable=False),
          Column("calling_ae", String(16), nullable=False),
          Column("file_mtime_ns", BigInteger),
          Column("purged_at", Float))
    Table("reports", metadata,
          Column("id", Integer, primary_key=True),
          Column("series_id", Integer, ForeignKey("series.id"), nullable=False, index=True),
          Column("version", Integer, nullable=False),
          Column("sop_instance_uid", String(64), nullable=False, unique=True),
          Column("path", Text, nullable=False),
          Column("key_image_path", Text),
          Column("verdict", String(16), nullable=False),
          Column("score", Float),
          Column("created_at", Float, nullable=False),
          Column("superseded", Boolean, nullable=False))
    Table("deliveries", metadata,
          Column("id", Integer, primary_key=True),
          Column("report_id", Integer, ForeignKey("reports.id"), nullable=False, index=True),
          Column("destination", String(64), nullable=False),
          Column("state", String(16), nullable=False, index=True),
          Column("attempts", Integer, nullable=False),
          Column("next_attempt_at", Float, nullable=False),
          Column("last_status", String(16)),
          Column("last_error", Text),
          Column("sent_at", Float))
    Table("audit_events", metadata,
          Column("id", Integer, primary_key=True),
          Column("at", Float, nullable=False, index=True),
          Column("event", String(32), nullable=False, index=True),
          Column("address", String(64), nullable=False),
          Column("calling_ae", String(16), nullable=False),
          Column("called_ae", String(16), nullable=False),
          Column("study_uid", String(64), nullable=False),
          Column("series_uid", String(64), nullable=False, index=True),
          Column("sop_instance_uid", String(64), nullable=False),
          Column("detail", Text, nullable=False))
    Table("users", metadata,
          Column("id", Integer, primary_key=True),
          Column("name", String(64), nullable=False, unique=True),
          Column("role", String(16), nullable=False),
          Column("password_hash", Text, nullable=False),
          Column("created_at", Float, nullable=False))
    return metadata
