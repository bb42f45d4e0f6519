"""Browser tests (``make e2e``): a headless Chromium against a running ``python -m service dev``."""
