"""`txkit serve`: a translation server whose decoder batches the sentences of concurrent requests together.

    app.py       the HTTP API (FastAPI): endpoints, limits, API key, errors as JSON
    engine.py    the decoding worker: one thread owns the model and feeds `Translator.search_continuous`
    metrics.py   what GET /metrics reports (Prometheus text format)
    page.html    the page at GET /: type text, see its translation

Imports fastapi, prometheus_client and (in the worker) torch: only `txkit serve` loads this package.
"""
