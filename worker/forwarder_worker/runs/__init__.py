"""Runs: the record of every run in Redis, and its export to durable files.

* :mod:`~forwarder_worker.runs.records`: one hash per run plus the histories and counters
  the operator and the api read;
* :mod:`~forwarder_worker.runs.history`: finished runs and Flower tasks appended to JSON
  Lines files, each once.
"""
