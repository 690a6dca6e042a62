"""Local mode and the ``forwarder`` command: :mod:`~forwarder_worker.local.cli` (``forwarder
up``, ``status`` and each component) and :mod:`~forwarder_worker.local.supervisor` (the child
processes and the embedded Redis).
"""
