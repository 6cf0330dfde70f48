/* A deterministic stand-in for real sensors (QEMU has none): values follow
 * slow triangle waves of the seq, so a test can predict every body. */
#ifndef IOTGW_SYNTHETIC_H
#define IOTGW_SYNTHETIC_H

#include "device.h"

void synthetic_sample(uint64_t seq, uint32_t uptime_ms, uint16_t battery_mv, device_sample *out);

#endif
