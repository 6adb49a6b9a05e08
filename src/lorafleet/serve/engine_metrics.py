"""`/metrics/engines`: every healthy replica's own vLLM metrics in one scrape, each sample labelled
with its `replica`.

Replicas listen on loopback with ports that change on restart, so Prometheus cannot scrape them
directly; the gateway scrapes them on demand and re-exposes the samples unchanged but for the label.
"""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lorafleet.serve.replicas import Replica, ReplicaPool


class _Snapshot:
    """A collector that yields fixed metric families (prometheus-client's custom-collector protocol)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def relabel(texts: dict[str, str]) -> list[Metric]:
    """Merge Prometheus text exposition from several replicas, adding `replica="<name>"` to every sample; a text
    that does not parse is left out."""
    merged: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:  # not Prometheus text (not a vLLM server?): left out, like a replica that did not answer
            continue
        for family in families:
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for s in family.samples:
                target.samples.append(Sample(s.name, {**s.labels, "replica": replica}, s.value, s.timestamp, s.exemplar))
    return list(merged.values())


async def scrape_engines(pool: ReplicaPool) -> bytes:
    """The merged metrics of every healthy replica (a replica that fails to answer is left out)."""
    healthy = [r for r in pool.replicas.values() if r.healthy]
    texts = await asyncio.gather(*(_scrape(pool.client, r) for r in healthy))
    registry = CollectorRegistry()
    registry.register(_Snapshot(relabel({r.name: t for r, t in zip(healthy, texts) if t is not None})))
    return generate_latest(registry)


async def _scrape(client: aiohttp.ClientSession, replica: Replica) -> str | None:
    try:
        async with client.get(f"{replica.url}/metrics", headers=replica.headers, timeout=aiohttp.ClientTimeout(total=5.0)) as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
