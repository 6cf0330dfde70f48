"""Locust load tests of the gateway's device-facing ingest (HTTP and MQTT); see docs/loadtest.md."""
