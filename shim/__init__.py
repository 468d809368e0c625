"""shim: keeps Bandwidth v1 ("Catapult") messaging apps running on the v2 API."""

__version__ = "0.1.0"
