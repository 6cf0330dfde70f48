#include "synthetic.h"

static double triangle(uint64_t x, uint32_t period) {
    uint32_t k = (uint32_t)(x % period);
    uint32_t half = period / 2u;
    return (double)(k <= half ? k : period - k) / (double)half;
}

void synthetic_sample(uint64_t seq, uint32_t uptime_ms, uint16_t battery_mv, device_sample *out) {
    out->battery_mv = battery_mv;
    out->n = 4;
    out->keys[0] = "temp_c";
    out->values[0] = 18.0 + 6.0 * triangle(seq, 40); /* 18..24 C in 0.3 C steps */
    out->keys[1] = "humidity_pct";
    out->values[1] = 35.0 + 20.0 * triangle(seq + 7, 50);
    out->keys[2] = "pressure_hpa";
    out->values[2] = 1013.25 - 2.5 * triangle(seq, 16);
    out->keys[3] = "uptime_s";
    out->values[3] = uptime_ms / 1000.0;
}
