"""Billing and checkpoint-storage usage types (organization-admin REST calls of the hosted
service; the local backend does not bill).

Usage comes in hourly buckets: each `BillingUsageEvent` carries who and what it is
attributed to, and its quantity in `BillingUsageEvent.event_info`, one of five kinds
told apart by their ``type``.

Example:
    >>> import msgspec
    >>> page = msgspec.json.decode(
    ...     b'{"data": [{"bucket_start": "2026-01-01T00:00:00Z",'
    ...     b' "bucket_end": "2026-01-01T01:00:00Z",'
    ...     b' "event_info": {"type": "training", "token_count": 1200}}]}',
    ...     type=BillingUsageResponse)
    >>> page.data[0].event_info.type, page.data[0].event_info.token_count
    ('training', 1200)
"""

from __future__ import annotations

import datetime as dt

import msgspec

from ..errors import invalid
from ._base import WireStruct

__all__ = [
    "BillingEventInfo",
    "BillingUsageEvent",
    "BillingUsageResponse",
    "BillingUsageSession",
    "CheckpointBillingEvent",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "GetBillingUsageRequest",
    "GetCurrentCheckpointStorageUsageRequest",
    "SamplingPrefillBillingEvent",
    "SamplingSampleBillingEvent",
    "StorageBillingEvent",
    "TrainingBillingEvent",
]

_MAX_WINDOW = dt.timedelta(days=14)


def _check_hour(where: str, value: dt.datetime) -> None:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise invalid(where, "a timezone-aware datetime", value,
                      "e.g. datetime(2026, 1, 1, tzinfo=timezone.utc)")
    if value.minute or value.second or value.microsecond:
        raise invalid(where, "a whole UTC hour", value.isoformat(),
                      "round down with value.replace(minute=0, second=0, microsecond=0)")


class GetBillingUsageRequest(WireStruct, frozen=True, kw_only=True):
    """The window of a billing-usage query: ``[starting_on, ending_before)``, whole UTC
    hours, at most 14 days long (the server also refuses a start in the future).

    Example:
        >>> from datetime import datetime, timezone
        >>> day = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> GetBillingUsageRequest(starting_on=day, ending_before=day.replace(day=2)).ending_before.day
        2
    """

    starting_on: dt.datetime
    ending_before: dt.datetime

    def __post_init__(self) -> None:
        _check_hour("GetBillingUsageRequest.starting_on", self.starting_on)
        _check_hour("GetBillingUsageRequest.ending_before", self.ending_before)
        if not self.starting_on < self.ending_before <= self.starting_on + _MAX_WINDOW:
            raise invalid("GetBillingUsageRequest.ending_before",
                          "a time after starting_on and at most 14 days after it",
                          self.ending_before.isoformat())


class TrainingBillingEvent(WireStruct, frozen=True, kw_only=True, tag="training",
                           tag_field="type"):
    """Tokens processed by forward and backward passes in the bucket."""

    token_count: int

    @property
    def type(self) -> str:
        """``"training"``."""
        return "training"


class SamplingPrefillBillingEvent(WireStruct, frozen=True, kw_only=True,
                                  tag="sampling_prefill", tag_field="type"):
    """Prompt tokens read while sampling; ``cached`` ones were served from the prefix cache
    (billed at the cached rate)."""

    cached: bool
    token_count: int

    @property
    def type(self) -> str:
        """``"sampling_prefill"``."""
        return "sampling_prefill"


class SamplingSampleBillingEvent(WireStruct, frozen=True, kw_only=True, tag="sampling_sample",
                                 tag_field="type"):
    """Tokens generated while sampling."""

    token_count: int

    @property
    def type(self) -> str:
        """``"sampling_sample"``."""
        return "sampling_sample"


class CheckpointBillingEvent(WireStruct, frozen=True, kw_only=True, tag="checkpoint",
                             tag_field="type"):
    """Checkpoints saved in the bucket (billed per checkpoint)."""

    count: int

    @property
    def type(self) -> str:
        """``"checkpoint"``."""
        return "checkpoint"


class StorageBillingEvent(WireStruct, frozen=True, kw_only=True, tag="storage",
                          tag_field="type"):
    """Checkpoint storage held during the bucket, in gigabyte-hours (``free`` storage is not
    charged)."""

    gigabyte_hours: float
    free: bool = False

    @property
    def type(self) -> str:
        """``"storage"``."""
        return "storage"


BillingEventInfo = (TrainingBillingEvent | SamplingPrefillBillingEvent
                    | SamplingSampleBillingEvent | CheckpointBillingEvent | StorageBillingEvent)


class BillingUsageEvent(WireStruct, frozen=True, kw_only=True):
    """One hourly bucket of usage: when, attributed to whom, and what (`event_info`).

    Costs are gross estimates in USD before credits (None where the server cannot price
    the row); they are not amounts due.
    """

    bucket_start: dt.datetime
    bucket_end: dt.datetime
    event_info: BillingEventInfo
    base_model: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    session_id: str | None = None
    project_id: str | None = None
    estimated_cost_usd: float | None = None
    effective_rate_usd_per_million_tokens: float | None = None
    effective_rate_usd_per_gigabyte_month: float | None = None


class BillingUsageSession(WireStruct, frozen=True, kw_only=True):
    """What a session that appears in the usage was created with."""

    user_metadata: dict[str, str] | None = None


class BillingUsageResponse(WireStruct, frozen=True, kw_only=True):
    """Usage buckets of a window, and the sessions they name (by session id).

    ``cost_data_through``: before it, cost estimates come from invoices; after it, from the
    published rates (None when no invoiced day is in the window).
    """

    data: list[BillingUsageEvent] = msgspec.field(default_factory=list)
    sessions: dict[str, BillingUsageSession] = msgspec.field(default_factory=dict)
    cost_data_through: dt.datetime | None = None


class GetCurrentCheckpointStorageUsageRequest(WireStruct, frozen=True, kw_only=True):
    """Query of current checkpoint storage: one project's, or (None) the organization's."""

    project_id: str | None = None


class CurrentCheckpointStorageUsageItem(WireStruct, frozen=True, kw_only=True):
    """Checkpoints stored now for one project and session owner."""

    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    project_id: str | None = None
    org_user_urn: str | None = None
    user_email: str | None = None
    user_name: str | None = None
    estimated_monthly_cost_usd: float | None = None


class CurrentCheckpointStorageUsageResponse(WireStruct, frozen=True, kw_only=True):
    """Checkpoint storage now, grouped by project and owner (may lag an hour or two)."""

    data: list[CurrentCheckpointStorageUsageItem] = msgspec.field(default_factory=list)
    effective_rate_usd_per_gigabyte_month: float | None = None

