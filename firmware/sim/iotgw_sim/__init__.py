"""Device fleet simulator: simulated STM32 devices that speak the gateway's device contract."""
