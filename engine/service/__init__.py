"""The HTTP service (``python -m cogvideo_engine serve``): OpenAI-style ``/v1/videos`` jobs over the serving loop,
server-sent events, Prometheus metrics, a durable job store, a playground page. Needs the ``serve`` extra
(starlette, uvicorn, prometheus-client, python-multipart); the rest of the package does not.

* :mod:`.store` -- the job store (SQLite + files) that survives a crash;
* :mod:`.params` -- a request body -> prompt + ``SamplingParams``;
* :mod:`.jobs` -- ``JobManager``: jobs over the ``AsyncEngine``, their events, checkpoints, outputs, retention;
* :mod:`.prometheus` -- the metrics;
* :mod:`.app` -- the routes (``create_app``); :mod:`.server` -- ``serve`` (uvicorn, graceful shutdown).
"""
