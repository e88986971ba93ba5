"""Audit trail of issuance decisions about authenticated clients.

A record names the client, subject, each piece of evidence by kind and
digest (never the evidence itself), the ratings with their reasons, the
levels, the policy version, the decision, the reasons for a refusal and the
token's ``jti``. The token endpoint commits the record before it answers,
so no token leaves without one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select

from .storage import AuditRecord, Database

__all__ = ["AuditEntry", "AuditLog"]

_INSERT = insert(AuditRecord)


@dataclass
class AuditEntry:
    """What one decision records; filled in as the request proceeds."""

    client_id: str
    grant_type: str
    policy_version: str
    subject: str | None = None
    evidence: list[dict[str, str]] = field(default_factory=list)
    ratings: dict[str, Any] = field(default_factory=dict)
    mial: int | None = None
    maal: int | None = None
    audience: list[str] = field(default_factory=list)


class AuditLog:
    """Writes and reads audit records."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def write(
        self,
        entry: AuditEntry,
        *,
        decision: str,
        error: str | None = None,
        reasons: list[str] | None = None,
        jti: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        """Commit one record; raises ``StoreUnavailable`` when it cannot."""
        record = dict(
            time=time.time(),
            client_id=entry.client_id,
            grant_type=entry.grant_type[:100],
            subject=entry.subject,
            decision=decision,
            error=error,
            reasons=json.dumps(reasons or []),
            evidence=json.dumps(entry.evidence),
            ratings=json.dumps(entry.ratings),
            mial=entry.mial,
            maal=entry.maal,
            policy_version=entry.policy_version,
            jti=jti,
            audience=json.dumps(entry.audience),
            expires_at=expires_at,
        )
        with self._db.connection() as conn:
            conn.execute(_INSERT, record)

    def by_jti(self, jti: str) -> dict[str, Any] | None:
        """The record of the token ``jti``, or ``None``."""
        rec = self._db.audit_by_jti(jti)
        return rec.as_dict() if rec is not None else None

    def recent(
        self, client_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest records, optionally for one client."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if client_id is not None:
            query = query.where(AuditRecord.client_id == client_id)
        with self._db.session() as s:
            return [r.as_dict() for r in s.scalars(query).all()]
