#include "device.h"

#include <string.h>

#include "envelope.h"
#include "topic.h"

static void log_kv(device *d, const char *event, const char *k1, uint64_t v1, const char *k2,
                   uint64_t v2) {
    char line[96];
    size_t n = 0;
    size_t k = strlen(event);
    memcpy(line, event, k);
    n = k;
    const char *keys[2] = {k1, k2};
    uint64_t vals[2] = {v1, v2};
    for (int i = 0; i < 2; i++) {
        if (keys[i] == NULL) continue;
        line[n++] = ' ';
        k = strlen(keys[i]);
        memcpy(line + n, keys[i], k);
        n += k;
        line[n++] = '=';
        char tmp[20];
        size_t m = 0;
        uint64_t v = vals[i];
        do {
            tmp[m++] = (char)('0' + v % 10u);
            v /= 10u;
        } while (v);
        while (m) line[n++] = tmp[--m];
    }
    line[n] = '\0';
    d->plat->log(line);
}

int device_init(device *d, const device_config *cfg, const device_platform *plat, seqstore *seq) {
    memset(d, 0, sizeof *d);
    d->cfg = cfg;
    d->plat = plat;
    d->seq = seq;
    if (topic_build(d->topic, sizeof d->topic, cfg->tenant, cfg->site, cfg->device_id,
                    TOPIC_TELEMETRY) < 0)
        return -1;
    ring_init(&d->buffer, d->slots, DEVICE_RING_SLOTS);
    mqtt_init(&d->mqtt, plat->net, plat->now_ms, 1000, 2);
    uint32_t seed = 2166136261u; /* FNV-1a of the device id: fleets jitter apart */
    for (const char *p = cfg->device_id; *p; p++) seed = (seed ^ (uint8_t)*p) * 16777619u;
    backoff_init(&d->reconnect, cfg->backoff_base_ms, cfg->backoff_cap_ms, seed ^ plat->now_ms());
    pwr_init(&d->power);
    d->next_sample_ms = plat->now_ms();
    d->next_connect_ms = plat->now_ms();
    log_kv(d, "BOOT", "seq_next", seq->next, "ring_slots", DEVICE_RING_SLOTS);
    return 0;
}

env_status device_encode(const device_config *cfg, uint64_t seq, const device_sample *s, char *out,
                         size_t cap, size_t *len) {
    env_metric metrics[DEVICE_MAX_SENSOR_METRICS + 1];
    size_t n = 0;
    for (; n < s->n && n < DEVICE_MAX_SENSOR_METRICS; n++) {
        metrics[n].key = s->keys[n];
        metrics[n].value = s->values[n];
    }
    metrics[n].key = "battery_v";
    metrics[n].value = s->battery_mv / 1000.0;
    n++;
    env_tag tags[] = {{"fw", cfg->fw_version}, {"board", cfg->board}};
    env_reading r = {seq, NULL, metrics, n, tags, 2};
    return env_encode(&r, out, cap, len);
}

static void take_sample(device *d) {
    uint64_t seq;
    if (seqstore_next(d->seq, &seq) != FLASH_OK) {
        /* Without a persisted seq there is no reading to number: skip it
         * rather than risk a seq that repeats after the next reset. */
        d->plat->log("SEQ_STORE_ERROR");
        return;
    }
    device_sample s;
    memset(&s, 0, sizeof s);
    d->plat->sample(seq, &s);
    char body[RING_BODY_MAX + 1];
    size_t len = 0;
    env_status st = device_encode(d->cfg, seq, &s, body, sizeof body, &len);
    if (st != ENV_OK) {
        log_kv(d, "ENCODE_ERROR", "seq", seq, "code", (uint64_t)(-st));
        return;
    }
    if (ring_push(&d->buffer, seq, TOPIC_TELEMETRY, body, len) == RING_STORED_DROPPED_OLDEST)
        log_kv(d, "DROP_OLDEST", "seq", seq, "dropped", d->buffer.dropped);
    log_kv(d, "SAMPLE", "seq", seq, "pending", d->buffer.count);
    (void)pwr_next(&d->power, &d->cfg->power, PWR_EV_SAMPLED, s.battery_mv, d->buffer.count);
}

static int ensure_connected(device *d) {
    if (d->mqtt.connected) return 1;
    uint32_t now = d->plat->now_ms();
    if ((int32_t)(d->next_connect_ms - now) > 0) return 0;
    mqtt_connect_opts o = {d->cfg->device_id, d->cfg->username, d->cfg->password,
                           d->cfg->keepalive_s, 0};
    mqtt_status st = mqtt_connect(&d->mqtt, &o);
    if (st == MQTT_OK) {
        backoff_reset(&d->reconnect);
        d->connects++;
        log_kv(d, "CONNECTED", "count", d->connects, "pending", d->buffer.count);
        return 1;
    }
    uint32_t delay = backoff_next(&d->reconnect);
    d->next_connect_ms = d->plat->now_ms() + delay;
    log_kv(d, "CONNECT_FAILED", "code", (uint64_t)(-st), "retry_ms", delay);
    return 0;
}

static void send_pending(device *d) {
    if (!ensure_connected(d)) return;
    for (uint16_t i = 0; i < d->cfg->max_publish_per_send; i++) {
        ring_slot *s = ring_peek(&d->buffer);
        if (s == NULL) break;
        if (s->packet_id == 0) s->packet_id = mqtt_next_packet_id(&d->mqtt);
        int dup = s->attempts > 0;
        if (s->attempts < 255) s->attempts++;
        mqtt_status st = mqtt_publish_qos1(&d->mqtt, d->topic, (const uint8_t *)s->body, s->len,
                                           s->packet_id, dup);
        if (st != MQTT_OK) {
            uint32_t delay = backoff_next(&d->reconnect);
            d->next_connect_ms = d->plat->now_ms() + delay;
            log_kv(d, "LINK_LOST", "seq", s->seq, "retry_ms", delay);
            return;
        }
        d->published++;
        log_kv(d, "PUBACK", "seq", s->seq, "pid", s->packet_id);
        (void)ring_pop(&d->buffer, s->seq);
    }
    if (!d->power.keep_link && d->buffer.count == 0) {
        mqtt_disconnect(&d->mqtt);
        d->plat->log("RADIO_OFF");
    }
}

void device_step(device *d) {
    switch (d->power.state) {
    case PWR_SAMPLE:
        take_sample(d);
        if (d->power.state == PWR_SAMPLE) /* sampling failed: sleep and retry */
            d->power.state = PWR_SLEEP;
        {
            /* Fixed rate; after a long blocking call (connect timeout) resume
             * from now instead of sampling in a burst to catch up. */
            uint32_t period = pwr_sleep_ms(&d->power, &d->cfg->power);
            uint32_t now = d->plat->now_ms();
            d->next_sample_ms += period;
            if ((int32_t)(now - d->next_sample_ms) > (int32_t)period) d->next_sample_ms = now + period;
        }
        break;
    case PWR_SEND:
        send_pending(d);
        (void)pwr_next(&d->power, &d->cfg->power, PWR_EV_SENT, 0, d->buffer.count);
        break;
    case PWR_SLEEP: {
        uint32_t now = d->plat->now_ms();
        if ((int32_t)(d->next_sample_ms - now) <= 0) {
            (void)pwr_next(&d->power, &d->cfg->power, PWR_EV_WOKE, 0, 0);
            break;
        }
        if (d->mqtt.connected && d->power.keep_link) {
            if (d->buffer.count > 0) {
                /* Backlog left after a bounded send phase: keep draining. */
                send_pending(d);
                break;
            }
            if (mqtt_keepalive(&d->mqtt) != MQTT_OK) d->plat->log("PING_FAILED");
        }
        uint32_t wake = d->next_sample_ms;
        d->plat->sleep_until(wake);
        break;
    }
    }
}
