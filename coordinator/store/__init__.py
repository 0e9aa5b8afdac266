"""The coordinator's durable state: the ``Store`` interface and its SQL implementation."""

from __future__ import annotations

from coordinator.store.base import IssueCertificate, Store

__all__ = ["IssueCertificate", "Store"]
