"""Forwarder's kopf operator: ScheduledTask resources reconciled into schedule entries.

``kopf run -m forwarder_operator`` loads the handlers; local mode's folder source lives here
too, because it reconciles the same resources from YAML files instead of the API server.
"""
