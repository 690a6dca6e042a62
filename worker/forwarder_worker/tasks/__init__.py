"""The built-in tasks, one module each (workers import them through the app's ``include``):
``forwarder.ping`` (:mod:`~forwarder_worker.tasks.ping`), ``forwarder.http``
(:mod:`~forwarder_worker.tasks.http`) and ``forwarder.collect_task_history``
(:mod:`~forwarder_worker.tasks.history`).
"""
