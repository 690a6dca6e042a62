"""Sending runs to the workers: beat's firings, run-now triggers and the api's submissions.

* :mod:`~forwarder_worker.dispatch.dispatcher`: a schedule's firings sent with
  concurrencyPolicy, deadline and jitter, each one recorded;
* :mod:`~forwarder_worker.dispatch.messages`: Celery's task messages built without
  ``send_task`` per message;
* :mod:`~forwarder_worker.dispatch.metrics`: the fire, skip and lateness counters.
"""
