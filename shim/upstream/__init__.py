"""The v2 client: shim's calls to Bandwidth's v2 messaging and media APIs, over a swappable
transport (``AiohttpTransport`` for real, ``MockTransport`` for socket-free unit tests)."""

from ._transport import (
    AiohttpTransport,
    ConnectFailed,
    MockResponse,
    MockTransport,
    Request,
    RequestFailed,
    Response,
    Timeout,
    Transport,
    TransportError,
)
from .client_v2 import LatencyObserver, SearchFailed, SearchRateLimited, UpstreamClient

__all__ = ["AiohttpTransport", "ConnectFailed", "LatencyObserver", "MockResponse", "MockTransport", "Request",
           "RequestFailed", "Response", "SearchFailed", "SearchRateLimited", "Timeout", "Transport", "TransportError",
           "UpstreamClient"]
