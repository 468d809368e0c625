"""The sandbox upstream: a built-in v2 simulator (a development aid, not Bandwidth)."""

from .web_sandbox import (
    CallbackTarget,
    SandboxState,
    build_sandbox_app,
    message_id,
    post_callback,
    segment_count,
    status_events,
)

__all__ = ["CallbackTarget", "SandboxState", "build_sandbox_app", "message_id", "post_callback", "segment_count",
           "status_events"]
