#include <string.h>

#include "fakes.h"
#include "mqtt.h"
#include "unit.h"

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

static int eq(const uint8_t *got, size_t n, const uint8_t *want, size_t wn) {
    return n == wn && memcmp(got, want, n) == 0;
}

/* CONNECT, client id "stm32-01", user "dev", password "pw", keep-alive 60,
 * clean session 0 (MQTT 3.1.1 section 3.1). */
static const uint8_t CONNECT_BYTES[] = {
    0x10, 29,                                    /* CONNECT, remaining length */
    0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,        /* protocol name, level 4 */
    0xC0,                                        /* username + password flags */
    0x00, 0x3C,                                  /* keep-alive 60 s */
    0x00, 0x08, 's', 't', 'm', '3', '2', '-', '0', '1',
    0x00, 0x03, 'd', 'e', 'v',
    0x00, 0x02, 'p', 'w'};
static const mqtt_connect_opts OPTS = {"stm32-01", "dev", "pw", 60, 0};

static void encode_connect(void) {
    uint8_t buf[64];
    size_t n = mqtt_encode_connect(buf, sizeof buf, &OPTS);
    CHECK(eq(buf, n, CONNECT_BYTES, sizeof CONNECT_BYTES));
    /* clean session, no credentials */
    mqtt_connect_opts o = {"c", NULL, NULL, 0, 1};
    n = mqtt_encode_connect(buf, sizeof buf, &o);
    CHECK(eq(buf, n, BYTES(0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, 0, 1, 'c')));
    CHECK(mqtt_encode_connect(buf, sizeof CONNECT_BYTES - 1, &OPTS) == 0); /* too small */
    CHECK(mqtt_encode_connect(buf, sizeof CONNECT_BYTES, &OPTS) == sizeof CONNECT_BYTES);
}

static void encode_publish_qos1(void) {
    uint8_t buf[512];
    size_t n = mqtt_encode_publish(buf, sizeof buf, "a/b", (const uint8_t *)"hi", 2, 1, 10, 0, 0);
    CHECK(eq(buf, n, BYTES(0x32, 9, 0, 3, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i')));
    n = mqtt_encode_publish(buf, sizeof buf, "a/b", (const uint8_t *)"hi", 2, 1, 10, 1, 0);
    CHECK(eq(buf, n, BYTES(0x3A, 9, 0, 3, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'))); /* DUP */
    n = mqtt_encode_publish(buf, sizeof buf, "t", (const uint8_t *)"x", 1, 0, 0, 1, 1);
    CHECK(eq(buf, n, BYTES(0x31, 4, 0, 1, 't', 'x'))); /* QoS 0: no DUP, no id; retain */
    CHECK(mqtt_encode_publish(buf, sizeof buf, "t", (const uint8_t *)"x", 1, 1, 0, 0, 0) == 0);
    /* 200-byte payload: two-byte remaining length 2+1+2+200 = 205 = 0xCD 0x01 */
    uint8_t payload[200];
    memset(payload, 'p', sizeof payload);
    n = mqtt_encode_publish(buf, sizeof buf, "t", payload, sizeof payload, 1, 0x1234, 0, 0);
    REQUIRE(n == 3 + 205);
    CHECK(buf[0] == 0x32 && buf[1] == 0xCD && buf[2] == 0x01);
    CHECK(buf[3] == 0 && buf[4] == 1 && buf[5] == 't' && buf[6] == 0x12 && buf[7] == 0x34);
    CHECK(memcmp(buf + 8, payload, sizeof payload) == 0);
}

static void encode_small_packets(void) {
    uint8_t buf[8];
    size_t n = mqtt_encode_puback(buf, sizeof buf, 10);
    CHECK(eq(buf, n, BYTES(0x40, 0x02, 0x00, 0x0A)));
    n = mqtt_encode_pingreq(buf, sizeof buf);
    CHECK(eq(buf, n, BYTES(0xC0, 0x00)));
    n = mqtt_encode_disconnect(buf, sizeof buf);
    CHECK(eq(buf, n, BYTES(0xE0, 0x00)));
}

static void varint(void) {
    struct {
        uint32_t v;
        uint8_t b[4];
        size_t n;
    } cases[] = {{0, {0x00}, 1},
                 {127, {0x7F}, 1},
                 {128, {0x80, 0x01}, 2},
                 {16383, {0xFF, 0x7F}, 2},
                 {16384, {0x80, 0x80, 0x01}, 3},
                 {2097151, {0xFF, 0xFF, 0x7F}, 3},
                 {2097152, {0x80, 0x80, 0x80, 0x01}, 4},
                 {268435455, {0xFF, 0xFF, 0xFF, 0x7F}, 4}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t out[4];
        size_t n = mqtt_encode_varint(out, sizeof out, cases[i].v);
        CHECK(eq(out, n, cases[i].b, cases[i].n));
    }
    uint8_t out[4];
    CHECK(mqtt_encode_varint(out, sizeof out, 268435456u) == 0);
}

static void parse_packets(void) {
    mqtt_packet p;
    CHECK(mqtt_parse(BYTES(0x20, 0x02, 0x01, 0x00), &p) == 4);
    CHECK(p.type == MQTT_CONNACK && p.session_present == 1 && p.return_code == 0);
    CHECK(mqtt_parse(BYTES(0x20, 0x02, 0x00, 0x05), &p) == 4);
    CHECK(p.return_code == 5); /* not authorized */
    CHECK(mqtt_parse(BYTES(0x40, 0x02, 0x12, 0x34), &p) == 4);
    CHECK(p.type == MQTT_PUBACK && p.packet_id == 0x1234);
    CHECK(mqtt_parse(BYTES(0xD0, 0x00), &p) == 2);
    CHECK(p.type == MQTT_PINGRESP);
    CHECK(mqtt_parse(BYTES(0x32, 9, 0, 3, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'), &p) == 11);
    CHECK(p.type == MQTT_PUBLISH && p.packet_id == 10);
    /* incomplete: needs more bytes */
    CHECK(mqtt_parse(BYTES(0x40), &p) == 0);
    CHECK(mqtt_parse(BYTES(0x40, 0x02, 0x12), &p) == 0);
    CHECK(mqtt_parse(BYTES(0x32, 0x80), &p) == 0);
    /* malformed */
    CHECK(mqtt_parse(BYTES(0x40, 0x03, 0, 1, 2), &p) == MQTT_ERR_PROTOCOL);
    CHECK(mqtt_parse(BYTES(0x20, 0x02, 0x00), &p) == 0);
    CHECK(mqtt_parse(BYTES(0x20, 0x03, 0, 0, 0), &p) == MQTT_ERR_PROTOCOL);
    CHECK(mqtt_parse(BYTES(0x30, 0x80, 0x80, 0x80, 0x80, 0x01), &p) == MQTT_ERR_PROTOCOL);
    CHECK(mqtt_parse(BYTES(0x00, 0x00), &p) == MQTT_ERR_PROTOCOL);
    CHECK(mqtt_parse(BYTES(0xD0, 0x01, 0x00), &p) == MQTT_ERR_PROTOCOL);
}

static const uint8_t CONNACK_OK[] = {0x20, 0x02, 0x00, 0x00};

static void client_connect_publish_ping_disconnect(void) {
    script s;
    script_init(&s);
    script_add(&s, '>', CONNECT_BYTES, sizeof CONNECT_BYTES);
    script_add(&s, '<', CONNACK_OK, sizeof CONNACK_OK);
    script_add(&s, '>', BYTES(0x32, 9, 0, 3, 'a', '/', 'b', 0x00, 0x01, 'h', 'i'));
    script_add(&s, '<', BYTES(0x40, 0x02, 0x00, 0x01));
    script_add(&s, '>', BYTES(0xC0, 0x00));
    script_add(&s, '<', BYTES(0xD0, 0x00));
    script_add(&s, '>', BYTES(0xE0, 0x00));
    s.max_recv_chunk = 1; /* packets arrive a byte at a time */
    mqtt_client c;
    fake_now = 1000;
    mqtt_init(&c, &s.t, fake_now_ms, 500, 2);
    REQUIRE(mqtt_connect(&c, &OPTS) == MQTT_OK);
    CHECK(c.connected);
    uint16_t id = mqtt_next_packet_id(&c);
    CHECK_EQ_U(id, 1);
    CHECK(mqtt_publish_qos1(&c, "a/b", (const uint8_t *)"hi", 2, id, 0) == MQTT_OK);
    CHECK(mqtt_keepalive(&c) == MQTT_OK); /* too early: no ping */
    fake_now += 31000;
    CHECK(mqtt_keepalive(&c) == MQTT_OK); /* half the keep-alive passed: PINGREQ */
    mqtt_disconnect(&c);
    CHECK(!c.connected);
    CHECK(script_done(&s));
    if (s.mismatch) fprintf(stderr, "  %s\n", s.mismatch_info);
}

static void client_retransmits_with_dup_until_puback(void) {
    script s;
    script_init(&s);
    script_add(&s, '>', CONNECT_BYTES, sizeof CONNECT_BYTES);
    script_add(&s, '<', CONNACK_OK, sizeof CONNACK_OK);
    script_add(&s, '>', BYTES(0x32, 6, 0, 1, 't', 0x00, 0x07, 'x'));
    /* no PUBACK: after ack_timeout the same packet again with DUP */
    script_add(&s, '>', BYTES(0x3A, 6, 0, 1, 't', 0x00, 0x07, 'x'));
    /* a stale PUBACK of another id and a PINGRESP are skipped, then ours */
    script_add(&s, '<', BYTES(0x40, 0x02, 0x00, 0x06, 0xD0, 0x00, 0x40, 0x02, 0x00, 0x07));
    mqtt_client c;
    fake_now = 0;
    mqtt_init(&c, &s.t, fake_now_ms, 500, 2);
    REQUIRE(mqtt_connect(&c, &OPTS) == MQTT_OK);
    CHECK(mqtt_publish_qos1(&c, "t", (const uint8_t *)"x", 1, 7, 0) == MQTT_OK);
    CHECK_EQ_U(c.retransmits, 1);
    CHECK(script_done(&s));
    if (s.mismatch) fprintf(stderr, "  %s\n", s.mismatch_info);
}

static void client_gives_up_after_retransmits(void) {
    script s;
    script_init(&s);
    script_add(&s, '>', CONNECT_BYTES, sizeof CONNECT_BYTES);
    script_add(&s, '<', CONNACK_OK, sizeof CONNACK_OK);
    script_add(&s, '>', BYTES(0x3A, 6, 0, 1, 't', 0x00, 0x07, 'x')); /* dup=1: re-delivery */
    script_add(&s, '>', BYTES(0x3A, 6, 0, 1, 't', 0x00, 0x07, 'x'));
    script_add(&s, '>', BYTES(0x3A, 6, 0, 1, 't', 0x00, 0x07, 'x'));
    mqtt_client c;
    fake_now = 0;
    mqtt_init(&c, &s.t, fake_now_ms, 500, 2);
    REQUIRE(mqtt_connect(&c, &OPTS) == MQTT_OK);
    uint32_t t0 = fake_now;
    CHECK(mqtt_publish_qos1(&c, "t", (const uint8_t *)"x", 1, 7, 1) == MQTT_ERR_TIMEOUT);
    CHECK(!c.connected);
    CHECK(fake_now - t0 >= 1500 && fake_now - t0 < 1600); /* 3 sends x 500 ms, bounded */
    CHECK(mqtt_publish_qos1(&c, "t", (const uint8_t *)"x", 1, 7, 1) == MQTT_ERR_STATE);
    CHECK(script_done(&s));
}

static void client_connect_refused_or_silent(void) {
    script s;
    script_init(&s);
    script_add(&s, '>', CONNECT_BYTES, sizeof CONNECT_BYTES);
    script_add(&s, '<', BYTES(0x20, 0x02, 0x00, 0x05)); /* not authorized */
    script_add(&s, '>', CONNECT_BYTES, sizeof CONNECT_BYTES);
    mqtt_client c;
    fake_now = 0;
    mqtt_init(&c, &s.t, fake_now_ms, 500, 2);
    CHECK(mqtt_connect(&c, &OPTS) == MQTT_ERR_REFUSED);
    CHECK(!c.connected);
    CHECK(mqtt_connect(&c, &OPTS) == MQTT_ERR_TIMEOUT);
    CHECK(!c.connected);
    CHECK(script_done(&s));
}

UNIT_SUITE(mqtt) = {
    {"mqtt: CONNECT bytes", encode_connect},
    {"mqtt: PUBLISH QoS 1 bytes (DUP, long length)", encode_publish_qos1},
    {"mqtt: PUBACK, PINGREQ, DISCONNECT bytes", encode_small_packets},
    {"mqtt: remaining-length varint", varint},
    {"mqtt: parse CONNACK, PUBACK, PINGRESP, PUBLISH; partial; malformed", parse_packets},
    {"mqtt: client connect, publish, ping, disconnect", client_connect_publish_ping_disconnect},
    {"mqtt: client retransmits with DUP until PUBACK", client_retransmits_with_dup_until_puback},
    {"mqtt: client gives up after bounded retransmits", client_gives_up_after_retransmits},
    {"mqtt: client connect refused, or no CONNACK", client_connect_refused_or_silent},
    {0, 0},
};
