"""Forwarder's kopf operator: ScheduledTask resources reconciled into schedule entries.

``kopf run -m forwarder_operator`` loads the handlers (importing this package registers
them); ``forwarder operator`` calls :func:`forwarder_operator.main.run`. Local mode's folder
source lives here too, because it reconciles the same resources from YAML files instead of
the API server.
"""

from forwarder_operator import handlers as handlers
