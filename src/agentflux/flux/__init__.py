"""The flux layer: config and states, ``FluxAgent`` and ``Flux.lift``, the run engine (lanes,
output buffer, perturbations, re-entry), the stream, pipelines, metrics, signals, tracing.

Built on ``sources`` and ``semaphores``; ``exporters``, ``workshop`` and ``cli`` sit above it.
Inside, arrows point one way too: ``_stage`` <- ``_pipeline`` <- ``_flux``, and the run engine
knows its flux only through the ``RunOwner`` protocol.
"""
