"""Exporters: flux metrics for other systems (the Prometheus collector; the ``prometheus`` extra).

Above the flux layer: they read fluxes and pipelines, nothing below imports them.
OpenTelemetry spans are made where the calls happen, in ``agentflux.flux`` (``trace=True``).
"""
