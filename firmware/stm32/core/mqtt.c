#include "mqtt.h"

#include <string.h>

#define MQTT_MAX_REMAINING 268435455u

size_t mqtt_encode_varint(uint8_t *buf, size_t cap, uint32_t value) {
    if (value > MQTT_MAX_REMAINING) return 0;
    size_t n = 0;
    do {
        if (n >= cap) return 0;
        uint8_t b = (uint8_t)(value % 128u);
        value /= 128u;
        if (value) b |= 0x80u;
        buf[n++] = b;
    } while (value);
    return n;
}

typedef struct {
    uint8_t *p;
    size_t cap;
    size_t n;
    int overflow;
} wbuf;

/* A wbuf with p == NULL only counts: the first pass sizes the packet. */
static void w8(wbuf *w, uint8_t b) {
    if (w->n >= w->cap) {
        w->overflow = 1;
        return;
    }
    if (w->p) w->p[w->n] = b;
    w->n++;
}

static void w16(wbuf *w, uint16_t v) {
    w8(w, (uint8_t)(v >> 8));
    w8(w, (uint8_t)v);
}

static void wbytes(wbuf *w, const uint8_t *s, size_t n) {
    if (w->n + n > w->cap) {
        w->overflow = 1;
        return;
    }
    if (n && w->p) memcpy(w->p + w->n, s, n);
    w->n += n;
}

static void wstr(wbuf *w, const char *s) {
    size_t n = strlen(s);
    if (n > 0xffffu) {
        w->overflow = 1;
        return;
    }
    w16(w, (uint16_t)n);
    wbytes(w, (const uint8_t *)s, n);
}

/* Fixed header for a body of `rem` bytes; returns its size or 0. */
static size_t header(wbuf *w, uint8_t first, size_t rem) {
    uint8_t len[4];
    size_t k = mqtt_encode_varint(len, sizeof len, (uint32_t)rem);
    if (k == 0 || rem > MQTT_MAX_REMAINING) return 0;
    w8(w, first);
    wbytes(w, len, k);
    return 1 + k;
}

static void connect_body(wbuf *w, const mqtt_connect_opts *o) {
    uint8_t flags = 0;
    if (o->clean_session) flags |= 0x02u;
    if (o->username) flags |= 0x80u;
    if (o->password) flags |= 0x40u;
    wstr(w, "MQTT");
    w8(w, 4); /* protocol level: 3.1.1 */
    w8(w, flags);
    w16(w, o->keepalive_s);
    wstr(w, o->client_id);
    if (o->username) wstr(w, o->username);
    if (o->password) wstr(w, o->password);
}

size_t mqtt_encode_connect(uint8_t *buf, size_t cap, const mqtt_connect_opts *o) {
    if (o->password && !o->username) return 0; /* 3.1.1: a password needs a username */
    wbuf count = {NULL, (size_t)-1, 0, 0};
    connect_body(&count, o);
    wbuf w = {buf, cap, 0, 0};
    if (count.overflow || header(&w, MQTT_CONNECT << 4, count.n) == 0) return 0;
    connect_body(&w, o);
    return w.overflow ? 0 : w.n;
}

size_t mqtt_encode_publish(uint8_t *buf, size_t cap, const char *topic, const uint8_t *payload,
                           size_t len, uint8_t qos, uint16_t packet_id, int dup, int retain) {
    if (qos > 2 || (qos && packet_id == 0)) return 0;
    size_t tlen = strlen(topic);
    if (tlen > 0xffffu) return 0;
    size_t rem = 2u + tlen + (qos ? 2u : 0u) + len;
    uint8_t first = (uint8_t)(MQTT_PUBLISH << 4 | (dup && qos ? 0x08u : 0u) | qos << 1 |
                              (retain ? 1u : 0u));
    wbuf w = {buf, cap, 0, 0};
    if (header(&w, first, rem) == 0) return 0;
    wstr(&w, topic);
    if (qos) w16(&w, packet_id);
    wbytes(&w, payload, len);
    return w.overflow ? 0 : w.n;
}

size_t mqtt_encode_puback(uint8_t *buf, size_t cap, uint16_t packet_id) {
    if (cap < 4) return 0;
    buf[0] = MQTT_PUBACK << 4;
    buf[1] = 2;
    buf[2] = (uint8_t)(packet_id >> 8);
    buf[3] = (uint8_t)packet_id;
    return 4;
}

size_t mqtt_encode_pingreq(uint8_t *buf, size_t cap) {
    if (cap < 2) return 0;
    buf[0] = MQTT_PINGREQ << 4;
    buf[1] = 0;
    return 2;
}

size_t mqtt_encode_disconnect(uint8_t *buf, size_t cap) {
    if (cap < 2) return 0;
    buf[0] = MQTT_DISCONNECT << 4;
    buf[1] = 0;
    return 2;
}

int mqtt_parse(const uint8_t *buf, size_t len, mqtt_packet *out) {
    if (len < 2) return 0;
    uint32_t rem = 0;
    uint32_t mult = 1;
    size_t i = 1;
    for (;;) {
        if (i >= len) return 0;
        if (i > 4) return MQTT_ERR_PROTOCOL; /* more than 4 length bytes */
        uint8_t b = buf[i++];
        rem += (uint32_t)(b & 0x7fu) * mult;
        if (!(b & 0x80u)) break;
        mult *= 128u;
    }
    if (len - i < rem) return 0;
    memset(out, 0, sizeof *out);
    out->type = buf[0] >> 4;
    out->flags = buf[0] & 0x0fu;
    out->remaining = rem;
    out->body = buf + i;
    const uint8_t *b = out->body;
    switch (out->type) {
    case MQTT_CONNACK:
        if (rem != 2 || out->flags) return MQTT_ERR_PROTOCOL;
        out->session_present = b[0] & 1u;
        out->return_code = b[1];
        break;
    case MQTT_PUBACK:
        if (rem != 2 || out->flags) return MQTT_ERR_PROTOCOL;
        out->packet_id = (uint16_t)(b[0] << 8 | b[1]);
        break;
    case MQTT_PINGRESP:
        if (rem != 0 || out->flags) return MQTT_ERR_PROTOCOL;
        break;
    case MQTT_PUBLISH: {
        if (rem < 2) return MQTT_ERR_PROTOCOL;
        uint32_t tlen = (uint32_t)(b[0] << 8 | b[1]);
        uint8_t qos = (out->flags >> 1) & 3u;
        if (qos == 3 || 2u + tlen + (qos ? 2u : 0u) > rem) return MQTT_ERR_PROTOCOL;
        if (qos) out->packet_id = (uint16_t)(b[2 + tlen] << 8 | b[3 + tlen]);
        break;
    }
    case MQTT_SUBACK:
        if (rem < 3) return MQTT_ERR_PROTOCOL;
        out->packet_id = (uint16_t)(b[0] << 8 | b[1]);
        break;
    case 0:
    case 15:
        return MQTT_ERR_PROTOCOL;
    default:
        break; /* a client does not expect these; the caller skips them */
    }
    return (int)(i + rem);
}

void mqtt_init(mqtt_client *c, transport *net, uint32_t (*now_ms)(void), uint32_t ack_timeout_ms,
               uint8_t max_retransmits) {
    memset(c, 0, sizeof *c);
    c->net = net;
    c->now_ms = now_ms;
    c->ack_timeout_ms = ack_timeout_ms;
    c->max_retransmits = max_retransmits;
}

static mqtt_status send_packet(mqtt_client *c, size_t n) {
    if (n == 0) return MQTT_ERR_SPACE;
    int rc = c->net->send(c->net->ctx, c->tx, n, c->ack_timeout_ms);
    if (rc != (int)n) {
        c->connected = 0;
        return MQTT_ERR_LINK;
    }
    c->last_tx_ms = c->now_ms();
    return MQTT_OK;
}

/* Wait until a packet of `type` (and packet_id, for PUBACK) arrives or the
 * deadline passes. Other packets are consumed and dropped: a late PUBACK of an
 * earlier retransmission, a PINGRESP, a PUBLISH (QoS 1 is acknowledged). */
static mqtt_status wait_for(mqtt_client *c, uint8_t type, uint16_t packet_id, uint32_t deadline,
                            mqtt_packet *out) {
    for (;;) {
        while (c->rx_len > 0) {
            mqtt_packet p;
            int k = mqtt_parse(c->rx, c->rx_len, &p);
            if (k < 0) {
                c->connected = 0;
                c->rx_len = 0;
                return MQTT_ERR_PROTOCOL;
            }
            if (k == 0) {
                if (c->rx_len == sizeof c->rx) { /* a packet we cannot hold */
                    c->connected = 0;
                    c->rx_len = 0;
                    return MQTT_ERR_PROTOCOL;
                }
                break;
            }
            int match = p.type == type && (type != MQTT_PUBACK || p.packet_id == packet_id);
            if (match && out) *out = p;
            if (p.type == MQTT_PUBLISH && ((p.flags >> 1) & 3u) == 1u) {
                uint8_t ack[4];
                size_t n = mqtt_encode_puback(ack, sizeof ack, p.packet_id);
                (void)c->net->send(c->net->ctx, ack, n, c->ack_timeout_ms);
            }
            memmove(c->rx, c->rx + k, c->rx_len - (size_t)k);
            c->rx_len -= (size_t)k;
            if (match) return MQTT_OK;
        }
        uint32_t now = c->now_ms();
        if ((int32_t)(deadline - now) <= 0) return MQTT_ERR_TIMEOUT;
        int n = c->net->recv(c->net->ctx, c->rx + c->rx_len, sizeof c->rx - c->rx_len,
                             deadline - now);
        if (n < 0) {
            c->connected = 0;
            return MQTT_ERR_LINK;
        }
        c->rx_len += (size_t)n;
    }
}

mqtt_status mqtt_connect(mqtt_client *c, const mqtt_connect_opts *o) {
    c->connected = 0;
    c->rx_len = 0;
    if (c->net->open && c->net->open(c->net->ctx) < 0) return MQTT_ERR_LINK;
    if (c->net->flush) c->net->flush(c->net->ctx);
    c->keepalive_s = o->keepalive_s;
    mqtt_status st = send_packet(c, mqtt_encode_connect(c->tx, sizeof c->tx, o));
    if (st != MQTT_OK) return st;
    mqtt_packet p;
    st = wait_for(c, MQTT_CONNACK, 0, c->now_ms() + c->ack_timeout_ms, &p);
    if (st != MQTT_OK) return st;
    if (p.return_code != 0) return MQTT_ERR_REFUSED;
    c->connected = 1;
    return MQTT_OK;
}

uint16_t mqtt_next_packet_id(mqtt_client *c) {
    c->last_packet_id = (uint16_t)(c->last_packet_id + 1u);
    if (c->last_packet_id == 0) c->last_packet_id = 1;
    return c->last_packet_id;
}

mqtt_status mqtt_publish_qos1(mqtt_client *c, const char *topic, const uint8_t *payload,
                              size_t len, uint16_t packet_id, int dup) {
    if (!c->connected) return MQTT_ERR_STATE;
    for (uint32_t attempt = 0; attempt <= c->max_retransmits; attempt++) {
        int d = dup || attempt > 0;
        size_t n = mqtt_encode_publish(c->tx, sizeof c->tx, topic, payload, len, 1, packet_id, d, 0);
        if (n == 0) return MQTT_ERR_SPACE;
        if (attempt > 0) c->retransmits++;
        mqtt_status st = send_packet(c, n);
        if (st != MQTT_OK) return st;
        st = wait_for(c, MQTT_PUBACK, packet_id, c->now_ms() + c->ack_timeout_ms, NULL);
        if (st == MQTT_OK) return MQTT_OK;
        if (st != MQTT_ERR_TIMEOUT) return st;
    }
    c->connected = 0;
    return MQTT_ERR_TIMEOUT;
}

mqtt_status mqtt_ping(mqtt_client *c) {
    if (!c->connected) return MQTT_ERR_STATE;
    mqtt_status st = send_packet(c, mqtt_encode_pingreq(c->tx, sizeof c->tx));
    if (st != MQTT_OK) return st;
    st = wait_for(c, MQTT_PINGRESP, 0, c->now_ms() + c->ack_timeout_ms, NULL);
    if (st != MQTT_OK) c->connected = 0;
    return st;
}

mqtt_status mqtt_keepalive(mqtt_client *c) {
    if (!c->connected || c->keepalive_s == 0) return c->connected ? MQTT_OK : MQTT_ERR_STATE;
    if (c->now_ms() - c->last_tx_ms < (uint32_t)c->keepalive_s * 500u) return MQTT_OK;
    return mqtt_ping(c);
}

void mqtt_disconnect(mqtt_client *c) {
    if (c->connected) (void)send_packet(c, mqtt_encode_disconnect(c->tx, sizeof c->tx));
    c->connected = 0;
}
