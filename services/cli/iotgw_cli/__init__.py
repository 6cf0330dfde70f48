"""iot-gateway cli."""
