"""The OttoAI backend web process and the foundations both processes share."""

__version__ = "0.1.0"
