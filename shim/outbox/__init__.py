"""Outbox delivery: durable, leased, retried delivery of v1 callbacks to the apps' URLs.

``DeliveryEngine`` claims and schedules work; the outbound URL policy lives in ``_url_safety``.
"""

from ._engine import AttemptResult, DeliveryEngine, next_delay, parse_retry_after, query_params, signature
from ._url_safety import AddressPolicy, SafeResolver, UnsafeUrl

__all__ = ["AddressPolicy", "AttemptResult", "DeliveryEngine", "SafeResolver", "UnsafeUrl", "next_delay",
           "parse_retry_after", "query_params", "signature"]
