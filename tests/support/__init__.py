"""Test support: real servers and processes for Forwarder's tests (no mocks, no fakes)."""
