"""iot-gateway."""
