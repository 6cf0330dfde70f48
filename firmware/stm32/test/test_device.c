/* The device loop against an in-process broker double that can go down and
 * come back: store-and-forward, order, DUP re-sends, drop-oldest, batching. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "fakes.h"
#include "flash_ram.h"
#include "unit.h"

#define MAX_SEEN 512

typedef struct {
    int up;
    int session; /* CONNECT accepted on the current link */
    uint8_t in[1024];
    size_t in_len;
    uint8_t out[256];
    size_t out_len, out_pos;
    uint64_t seen[MAX_SEEN]; /* seq of every PUBLISH that got a PUBACK */
    int n_seen;
    int dups;
    int connects;
    int disconnects;
} broker;

static broker B;
static char LOG[64 * 1024];
static size_t LOG_LEN;

static void reply(const uint8_t *p, size_t n) {
    if (B.out_len + n <= sizeof B.out) {
        memcpy(B.out + B.out_len, p, n);
        B.out_len += n;
    }
}

static int b_send(void *ctx, const uint8_t *buf, size_t len, uint32_t timeout_ms) {
    (void)ctx;
    (void)timeout_ms;
    if (!B.up) { /* the bytes go nowhere, like QEMU's serial with no socket */
        B.session = 0;
        B.in_len = 0;
        return (int)len;
    }
    if (B.in_len + len > sizeof B.in) return -1;
    memcpy(B.in + B.in_len, buf, len);
    B.in_len += len;
    for (;;) {
        mqtt_packet p;
        int k = mqtt_parse(B.in, B.in_len, &p);
        if (k <= 0) break;
        if (p.type == MQTT_CONNECT) {
            B.session = 1;
            B.connects++;
            reply((const uint8_t[]){0x20, 2, 0, 0}, 4);
        } else if (p.type == MQTT_PUBLISH && B.session) {
            const char *body = (const char *)p.body + 2 + (p.body[0] << 8 | p.body[1]) + 2;
            uint64_t seq = strtoull(body + 7, NULL, 10); /* {"seq":N */
            if (B.n_seen < MAX_SEEN) B.seen[B.n_seen++] = seq;
            if (p.flags & 0x08) B.dups++;
            reply((const uint8_t[]){0x40, 2, (uint8_t)(p.packet_id >> 8), (uint8_t)p.packet_id}, 4);
        } else if (p.type == MQTT_PINGREQ && B.session) {
            reply((const uint8_t[]){0xD0, 0}, 2);
        } else if (p.type == MQTT_DISCONNECT) {
            B.session = 0;
            B.disconnects++;
        }
        memmove(B.in, B.in + k, B.in_len - (size_t)k);
        B.in_len -= (size_t)k;
    }
    return (int)len;
}

static int b_recv(void *ctx, uint8_t *buf, size_t len, uint32_t timeout_ms) {
    (void)ctx;
    if (!B.up || B.out_pos == B.out_len) {
        fake_now += timeout_ms;
        return 0;
    }
    size_t n = B.out_len - B.out_pos;
    if (n > len) n = len;
    memcpy(buf, B.out + B.out_pos, n);
    B.out_pos += n;
    if (B.out_pos == B.out_len) B.out_pos = B.out_len = 0;
    fake_now += 5; /* a round trip */
    return (int)n;
}

static void b_flush(void *ctx) {
    (void)ctx;
    B.out_pos = B.out_len = 0;
}

static transport NET = {NULL, b_send, b_recv, b_flush, NULL};
static uint16_t BATTERY_MV = 3900;

static void p_sleep_until(uint32_t t) {
    if ((int32_t)(t - fake_now) > 0) fake_now = t;
}
static void p_log(const char *line) {
    size_t n = strlen(line);
    if (LOG_LEN + n + 2 < sizeof LOG) {
        memcpy(LOG + LOG_LEN, line, n);
        LOG_LEN += n;
        LOG[LOG_LEN++] = '\n';
        LOG[LOG_LEN] = 0;
    }
}
static void p_sample(uint64_t seq, device_sample *out) {
    out->battery_mv = BATTERY_MV;
    out->n = 1;
    out->keys[0] = "temp_c";
    out->values[0] = 20.0 + (double)(seq % 8) * 0.5;
}

static const device_platform PLAT = {fake_now_ms, p_sleep_until, p_log, p_sample, &NET};
static const device_config CFG = {
    "acme", "aal", "stm32-01", "dev", "pw", "0.1.0", "host", 30, 500, 4000, 8,
    {1000, 5000, 3400, 3600, 4}};

static uint8_t flash_mem[4 * 256];
static flash_ram FLASH;
static seqstore SEQ;
static device DEV;

static void start(void) {
    memset(&B, 0, sizeof B);
    LOG_LEN = 0;
    LOG[0] = 0;
    fake_now = 100000;
    BATTERY_MV = 3900;
    memset(flash_mem, 0xff, sizeof flash_mem);
    flash_ram_init(&FLASH, flash_mem, 256, 4);
    seqstore_open(&SEQ, &FLASH.dev, 1);
    device_init(&DEV, &CFG, &PLAT, &SEQ);
}

/* Step the device until fake time reaches `until` (bounded in steps too). */
static void run_until(uint32_t until) {
    for (int i = 0; i < 200000 && (int32_t)(until - fake_now) > 0; i++) device_step(&DEV);
}

static int count_lines(const char *prefix) {
    int n = 0;
    for (const char *p = LOG; (p = strstr(p, prefix)) != NULL; p++) n++;
    return n;
}

static void store_and_forward_across_outage(void) {
    start();
    B.up = 1;
    run_until(110000);
    int before = B.n_seen;
    CHECK(before >= 9);
    B.up = 0; /* 15 s outage: 15 readings, fewer than the 24 slots */
    run_until(125000);
    B.up = 1;
    run_until(145000);
    CHECK(count_lines("LINK_LOST") >= 1);
    CHECK(count_lines("CONNECTED") >= 2);
    CHECK_EQ_U(DEV.buffer.dropped, 0);
    /* every seq 0..max arrived, in order; re-sends only repeat the head */
    uint64_t max = 0;
    for (int i = 0; i < B.n_seen; i++) {
        if (i) CHECK(B.seen[i] == B.seen[i - 1] || B.seen[i] == B.seen[i - 1] + 1);
        if (B.seen[i] > max) max = B.seen[i];
    }
    CHECK(B.seen[0] == 0);
    CHECK(max >= 40);
    CHECK(DEV.buffer.count <= 1);
    /* every PUBACK the device logged is a seq the broker saw */
    int acked = count_lines("PUBACK seq=");
    CHECK(acked >= (int)max);
}

static void overflow_drops_oldest_counted(void) {
    start();
    B.up = 1;
    run_until(103000);
    B.up = 0; /* 40 s outage: 40 readings into 24 slots */
    run_until(143000);
    B.up = 1;
    run_until(160000);
    CHECK(DEV.buffer.dropped >= 14);
    CHECK(count_lines("DROP_OLDEST") == (int)DEV.buffer.dropped);
    /* the gap in what arrived is exactly what was dropped */
    uint64_t max = 0;
    int distinct = 0;
    for (int i = 0; i < B.n_seen; i++) {
        if (i == 0 || B.seen[i] != B.seen[i - 1]) distinct++;
        if (B.seen[i] > max) max = B.seen[i];
        if (i) CHECK(B.seen[i] >= B.seen[i - 1]);
    }
    CHECK_EQ_U((uint64_t)distinct + DEV.buffer.dropped, max + 1);
}

static void low_battery_batches(void) {
    start();
    BATTERY_MV = 3300;
    B.up = 1;
    run_until(100000 + 5000 * 20);
    CHECK(B.n_seen >= 16);
    /* one connection per batch of 4, each closed after the batch */
    CHECK(B.connects >= 4 && B.connects <= B.n_seen / 4 + 1);
    CHECK(B.disconnects >= 4);
    CHECK(count_lines("RADIO_OFF") == B.disconnects);
    for (int i = 1; i < B.n_seen; i++) CHECK(B.seen[i] == B.seen[i - 1] + 1);
}

UNIT_SUITE(device) = {
    {"device: store-and-forward across a broker outage, in order", store_and_forward_across_outage},
    {"device: long outage drops oldest, counted", overflow_drops_oldest_counted},
    {"device: low battery batches and turns the radio off", low_battery_batches},
    {0, 0},
};
