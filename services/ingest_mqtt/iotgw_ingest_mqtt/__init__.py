"""iot-gateway ingest_mqtt."""
