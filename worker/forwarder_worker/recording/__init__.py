"""What a worker adds to Celery so that every run is recorded as it goes.

* :mod:`~forwarder_worker.recording.signals`: signal receivers writing each run's
  transitions (received, started, retried, failed, revoked);
* :mod:`~forwarder_worker.recording.result_backend`: Celery's Redis result backend, writing a
  SUCCESS record in the result's own round trip.
"""
