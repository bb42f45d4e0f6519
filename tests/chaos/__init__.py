"""The chaos suite: two web and two worker processes under load while their Redis misbehaves.

``make test`` runs it short; ``make chaos`` (``bench/chaos.py``) runs it longer and
records its figures in ``bench/RESULTS.md``.
"""
