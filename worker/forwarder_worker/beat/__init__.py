"""Celery Beat with Forwarder's scheduler (:mod:`~forwarder_worker.beat.scheduler`):
``celery -A forwarder_worker.app beat -S forwarder_worker.beat.scheduler:ForwarderScheduler``.
"""
