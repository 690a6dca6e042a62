"""The built-in tasks, one module each (workers import them through the app's ``include``):
``forwarder.ping`` (:mod:`~forwarder_worker.tasks.ping`), ``forwarder.http``
(:mod:`~forwarder_worker.tasks.http`) and ``forwarder.collect_task_history``
(:mod:`~forwarder_worker.tasks.history`); and the base class of every task on a Forwarder
app, which applies a schedule's retry policy (:mod:`~forwarder_worker.tasks.base`).
"""
