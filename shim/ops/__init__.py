"""Operations: health, readiness, metrics, JSON logs and the admin API (``web_ops``)."""

from . import web_ops
from ._logs import AccessLog, JsonFormatter, scrub, setup_logging
from ._metrics import Metrics
from ._usage import UsageTracker, path_shape, report

__all__ = ["AccessLog", "JsonFormatter", "Metrics", "UsageTracker", "path_shape", "report", "scrub", "setup_logging",
           "web_ops"]
