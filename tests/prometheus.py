"""Read Prometheus text the way a scraper does (``prometheus_client``'s own parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str | bytes) -> Samples:
    """Every sample of ``text`` by name and labels (counters keep their ``_total``)."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; a ``KeyError`` naming it when the scrape does not have it."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise KeyError(f"no sample {name}{labels} among {sorted({n for n, _ in samples})}")
    return samples[key]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
