/* Print envelope bodies built by the portable core, one JSON object per line:
 * the synthetic sensor's bodies (what the QEMU image publishes) and edge cases
 * at the limits of the gateway's rules. tests/firmware checks each line with
 * the gateway's own validation. */
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "envelope.h"
#include "synthetic.h"

static void print(const env_reading *r) {
    char out[4096];
    size_t len;
    env_status st = env_encode(r, out, sizeof out, &len);
    if (st != ENV_OK) {
        fprintf(stderr, "encode failed: %d\n", st);
        return;
    }
    puts(out);
}

int main(void) {
    static const device_config cfg = {"acme", "aal", "stm32-01", "u", "p", "0.1.0",
                                      "netduinoplus2", 30, 500, 4000, 8, {1000, 5000, 3400, 3600, 4}};
    for (uint64_t seq = 0; seq < 60; seq++) {
        device_sample s;
        synthetic_sample(seq, (uint32_t)(seq * 1250u), (uint16_t)(3300u + seq * 10u), &s);
        char out[512];
        size_t len;
        if (device_encode(&cfg, seq, &s, out, sizeof out, &len) != ENV_OK) return 1;
        puts(out);
    }
    /* 32 metrics at the key-length limit and odd values */
    static char keys[32][48];
    env_metric m[32];
    const double vals[] = {0, -0.0, 1e-6, -1e-7, 999999999999999.0, -123.456789, 0.1, 42};
    for (int i = 0; i < 32; i++) {
        snprintf(keys[i], sizeof keys[i], "m%02d_abcdefghijklmnopqrstuvwxyz0", i);
        m[i].key = keys[i];
        m[i].value = vals[i % 8];
    }
    /* 16 tags with 64-character values that need escaping */
    static char tkeys[16][16];
    static char tvals[16][65];
    env_tag t[16];
    for (int i = 0; i < 16; i++) {
        snprintf(tkeys[i], sizeof tkeys[i], "t%d", i);
        memset(tvals[i], 'a' + i, 64);
        tvals[i][64] = 0;
        tvals[i][i] = i % 2 ? '"' : '\\';
        t[i].key = tkeys[i];
        t[i].value = tvals[i];
    }
    env_reading r = {(uint64_t)INT64_MAX, "2025-09-23T11:18:41.120Z", m, 32, t, 16};
    print(&r);
    env_reading r2 = {0, "2025-09-23T11:18:41Z", m, 1, NULL, 0};
    print(&r2);
    return 0;
}
