"""What `GET /metrics` reports, in the Prometheus text format (prometheus_client, one registry per server)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's counters, gauges and histograms (names start with `txkit_`)."""

    def __init__(self):
        prometheus_client.disable_created_metrics()  # no `_created` series next to every counter
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # CPU time, resident memory, open files of the server process
        self.requests = Counter("txkit_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=r)  # fmt: skip
        self.in_progress = Gauge("txkit_requests_in_progress", "translation requests being answered", registry=r)
        self.sentences = Counter("txkit_sentences", "sentences translated (searched to the end)", registry=r)
        self.sentences_cancelled = Counter(
            "txkit_sentences_cancelled", "sentences dropped because their client went away", registry=r
        )
        self.source_tokens = Counter("txkit_source_tokens", "source tokens of translated requests, </s> included",
                                     registry=r)  # fmt: skip
        self.output_tokens = Counter("txkit_output_tokens", "output tokens of the best translations, </s> included",
                                     registry=r)  # fmt: skip
        self.queue_depth = Gauge("txkit_queue_sentences", "sentences waiting for the decoder", registry=r)
        self.batch_sentences = Histogram(
            "txkit_batch_sentences", "sentences in the decoder's batch each time it takes in new ones",
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram("txkit_request_seconds", "time to answer a translation request",
                                 buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip

    def exposition(self) -> bytes:
        """The current values in the Prometheus text format."""
        return generate_latest(self.registry)
