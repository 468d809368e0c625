"""The v1 facade: the legacy messages and media resources, served the way old SDKs expect.

``web_messages`` and ``web_media`` are the resources, ``web_auth`` the v1 Basic check, ``web_v1``
the v1 JSON/error wire helpers.
"""

from . import web_media, web_messages
from ._send import BATCH_LIMIT, Sender, message_path
from .web_auth import authenticate
from .web_v1 import json_response, read_json, v1_error_response

__all__ = ["BATCH_LIMIT", "Sender", "authenticate", "json_response", "message_path", "read_json", "v1_error_response",
           "web_media", "web_messages"]
