"""Schedules: the ``ScheduledTask`` spec, when it fires, its entry in Redis, and its status.

* :mod:`~forwarder_worker.schedules.model`: the spec as a pydantic model, one message per
  mistake;
* :mod:`~forwarder_worker.schedules.timing`: interval, cron (DST-correct) and one-off times;
* :mod:`~forwarder_worker.schedules.store`: the entries beat fires, in Redis;
* :mod:`~forwarder_worker.schedules.reconcile`: a declared spec applied to the store, alike
  for every source;
* :mod:`~forwarder_worker.schedules.status`: the resource's status in Kubernetes' shapes;
* :mod:`~forwarder_worker.schedules.preview`: the next fire times, before they happen;
* :mod:`~forwarder_worker.schedules.files`: ScheduledTask YAML files in a folder (local mode).
"""
