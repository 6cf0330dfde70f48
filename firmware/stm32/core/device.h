/* The device application: sample, buffer, send, sleep, driven by the power
 * state machine. Portable: the board supplies time, sensors, a log line sink
 * and the network transport; this file holds no register access.
 *
 * Log lines (one per event, on the board's log port) are part of the test
 * contract: "PUBACK seq=N pid=P" is printed only after the broker's PUBACK
 * for that reading arrived, so a test can compare what the device saw
 * acknowledged with what a subscriber received.
 */
#ifndef IOTGW_DEVICE_H
#define IOTGW_DEVICE_H

#include <stdint.h>

#include "backoff.h"
#include "envelope.h"
#include "mqtt.h"
#include "power.h"
#include "ring.h"
#include "seqstore.h"

#ifndef DEVICE_RING_SLOTS
#define DEVICE_RING_SLOTS 24
#endif
#define DEVICE_MAX_SENSOR_METRICS 8

typedef struct {
    const char *tenant;
    const char *site;
    const char *device_id; /* also the MQTT client id */
    const char *username;
    const char *password;
    const char *fw_version;
    const char *board;
    uint16_t keepalive_s;
    uint32_t backoff_base_ms;
    uint32_t backoff_cap_ms;
    uint16_t max_publish_per_send; /* bounds one send phase, so sampling keeps its pace */
    pwr_config power;
} device_config;

/* One set of sensor values. */
typedef struct {
    uint16_t battery_mv;
    uint8_t n;
    const char *keys[DEVICE_MAX_SENSOR_METRICS];
    double values[DEVICE_MAX_SENSOR_METRICS];
} device_sample;

typedef struct {
    uint32_t (*now_ms)(void);
    /* Sleep until now_ms() reaches t (or return early; the loop re-checks). */
    void (*sleep_until)(uint32_t t);
    void (*log)(const char *line);
    void (*sample)(uint64_t seq, device_sample *out);
    transport *net;
} device_platform;

typedef struct {
    const device_config *cfg;
    const device_platform *plat;
    seqstore *seq;
    mqtt_client mqtt;
    ring buffer;
    ring_slot slots[DEVICE_RING_SLOTS];
    backoff reconnect;
    pwr power;
    uint32_t next_connect_ms;
    uint32_t next_sample_ms;
    char topic[128];
    uint32_t published;
    uint32_t connects;
} device;

/* Returns 0, or -1 if the identity cannot form a valid topic. */
int device_init(device *d, const device_config *cfg, const device_platform *plat, seqstore *seq);
/* The envelope body of one sample: the sensor metrics plus battery_v, and
 * the tags fw and board. */
env_status device_encode(const device_config *cfg, uint64_t seq, const device_sample *s, char *out,
                         size_t cap, size_t *len);
/* One step of the power state machine. */
void device_step(device *d);

#endif
