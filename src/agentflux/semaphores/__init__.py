"""The semaphore layer: tokens, reasons and re-entry contexts, ``SemaphoreMixin``, state
codecs, and the ``Purgatory`` (deadlines, the change feed, claims to resume) over a store.

``stores/`` holds the store interface and its implementations, found by URL scheme.
"""
