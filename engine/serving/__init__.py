"""Serving: one loop that owns the device and batches work of every request (``core``), the requests' state
and the work they offer (``request``), what a request asks and what it gets back (``types``), and the
thread-safe, async-friendly front (``async_engine``). ``Engine.generate`` drives the same core.
"""
