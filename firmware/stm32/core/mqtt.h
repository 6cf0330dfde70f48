/* A small MQTT 3.1.1 client: CONNECT (username, password, keep-alive),
 * PUBLISH QoS 1 with retransmission until PUBACK, PINGREQ, DISCONNECT.
 *
 * Blocking and single-threaded: every call returns within its stated timeout.
 * The encoders and the packet parser are pure functions over byte buffers
 * (tested against known byte sequences); the client drives them over a
 * transport.
 */
#ifndef IOTGW_MQTT_H
#define IOTGW_MQTT_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

#ifndef MQTT_TX_MAX
#define MQTT_TX_MAX 320
#endif
#ifndef MQTT_RX_MAX
#define MQTT_RX_MAX 128
#endif

enum {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14
};

typedef enum {
    MQTT_OK = 0,
    MQTT_ERR_SPACE = -1,    /* packet does not fit the buffer */
    MQTT_ERR_LINK = -2,     /* transport error */
    MQTT_ERR_TIMEOUT = -3,  /* no answer in time (after every retransmission) */
    MQTT_ERR_REFUSED = -4,  /* CONNACK with a non-zero return code */
    MQTT_ERR_PROTOCOL = -5, /* malformed or unexpected packet */
    MQTT_ERR_STATE = -6     /* not connected */
} mqtt_status;

typedef struct {
    const char *client_id;
    const char *username; /* NULL: none */
    const char *password; /* NULL: none */
    uint16_t keepalive_s;
    int clean_session;
} mqtt_connect_opts;

typedef struct {
    uint8_t type;
    uint8_t flags; /* low nibble of the first byte */
    uint32_t remaining;
    const uint8_t *body;
    /* Filled for CONNACK / PUBACK / PUBLISH. */
    uint8_t session_present;
    uint8_t return_code;
    uint16_t packet_id;
} mqtt_packet;

/* Encoders return the packet length, or 0 if it does not fit in cap. */
size_t mqtt_encode_connect(uint8_t *buf, size_t cap, const mqtt_connect_opts *o);
size_t mqtt_encode_publish(uint8_t *buf, size_t cap, const char *topic, const uint8_t *payload,
                           size_t len, uint8_t qos, uint16_t packet_id, int dup, int retain);
size_t mqtt_encode_puback(uint8_t *buf, size_t cap, uint16_t packet_id);
size_t mqtt_encode_pingreq(uint8_t *buf, size_t cap);
size_t mqtt_encode_disconnect(uint8_t *buf, size_t cap);
/* Remaining-length varint: bytes written (1..4), or 0 if value > 268435455 or cap too small. */
size_t mqtt_encode_varint(uint8_t *buf, size_t cap, uint32_t value);

/* Parse one packet at the start of buf. Returns the bytes it takes (> 0), 0
 * if more bytes are needed, or MQTT_ERR_PROTOCOL if it is malformed. */
int mqtt_parse(const uint8_t *buf, size_t len, mqtt_packet *out);

typedef struct {
    transport *net;
    uint32_t (*now_ms)(void);
    uint32_t ack_timeout_ms;  /* wait for CONNACK / PUBACK / PINGRESP */
    uint8_t max_retransmits;  /* PUBLISH re-sent with DUP this many times before giving up */
    uint16_t keepalive_s;
    int connected;
    uint16_t last_packet_id;
    uint32_t last_tx_ms;
    uint32_t retransmits; /* statistics */
    uint8_t tx[MQTT_TX_MAX];
    uint8_t rx[MQTT_RX_MAX];
    size_t rx_len;
} mqtt_client;

void mqtt_init(mqtt_client *c, transport *net, uint32_t (*now_ms)(void), uint32_t ack_timeout_ms,
               uint8_t max_retransmits);
/* Send CONNECT and wait for CONNACK. */
mqtt_status mqtt_connect(mqtt_client *c, const mqtt_connect_opts *o);
/* A fresh packet identifier (1..65535). */
uint16_t mqtt_next_packet_id(mqtt_client *c);
/* Publish at QoS 1 and wait for the PUBACK of packet_id, re-sending with the
 * DUP flag every ack_timeout_ms up to max_retransmits times. dup = 1 marks the
 * first send as a re-delivery too (a reading sent before a reconnect). On
 * error the connection is marked lost: reconnect before the next publish. */
mqtt_status mqtt_publish_qos1(mqtt_client *c, const char *topic, const uint8_t *payload,
                              size_t len, uint16_t packet_id, int dup);
/* PINGREQ and wait for PINGRESP. */
mqtt_status mqtt_ping(mqtt_client *c);
/* Ping if nothing was sent for half the keep-alive. */
mqtt_status mqtt_keepalive(mqtt_client *c);
void mqtt_disconnect(mqtt_client *c);

#endif
