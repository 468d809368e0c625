"""The v2 client: shim's calls to Bandwidth's v2 messaging and media APIs, over a swappable
transport (``H1Transport`` for real, ``AiohttpTransport`` its fallback, ``MockTransport`` for
socket-free unit tests)."""

from ._h1 import H1Transport
from ._transport import (
    AiohttpTransport,
    ConnectFailed,
    MockResponse,
    MockTransport,
    Request,
    RequestFailed,
    Response,
    TimedOut,
    Timeout,
    Transport,
    TransportError,
)
from .client_v2 import LatencyObserver, SearchFailed, SearchRateLimited, UpstreamClient

__all__ = ["AiohttpTransport", "ConnectFailed", "H1Transport", "LatencyObserver", "MockResponse", "MockTransport",
           "Request", "RequestFailed", "Response", "SearchFailed", "SearchRateLimited", "TimedOut", "Timeout", "Transport",
           "TransportError", "UpstreamClient"]
