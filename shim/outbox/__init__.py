"""Outbox delivery: durable, leased, retried delivery of v1 callbacks to the apps' URLs.

``DeliveryEngine`` claims work and decides when to (re)try it (the policy itself is pure, in
``shim.core``); ``client_callbacks`` makes one HTTP attempt; ``_url_safety`` decides which
addresses a callback may reach.
"""

from ._engine import DeliveryEngine
from ._url_safety import AddressPolicy, RefusedAddress, SafeResolver, UnsafeUrl, embedded_v4, policy_from_config
from .client_callbacks import USER_AGENT, AttemptResult, CallbackClient, query_params, signature

__all__ = ["USER_AGENT", "AddressPolicy", "AttemptResult", "CallbackClient", "DeliveryEngine", "RefusedAddress", "SafeResolver",
           "UnsafeUrl", "embedded_v4", "policy_from_config", "query_params", "signature"]
