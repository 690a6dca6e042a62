"""The core's private Redis layer: clients built from settings."""
