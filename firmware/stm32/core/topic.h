/* MQTT topic of a device at the edge broker: v1/{tenant}/{site}/{device_id}/{class}. */
#ifndef IOTGW_TOPIC_H
#define IOTGW_TOPIC_H

#include <stddef.h>

typedef enum { TOPIC_TELEMETRY = 0, TOPIC_HEALTH = 1, TOPIC_CONTROL_ACK = 2 } topic_class;

/* "telemetry", "health", "control-ack"; NULL for an unknown class. */
const char *topic_class_name(topic_class cls);

/* 1 if s matches ^[A-Za-z0-9_-]{1,64}$ (the gateway's device_id rule; also
 * used for tenant and site so that no segment can carry '/', '+' or '#'). */
int topic_segment_valid(const char *s);

/* Write the topic into out (NUL-terminated). Returns its length, or -1 if a
 * segment is invalid, or -2 if it does not fit. */
int topic_build(char *out, size_t cap, const char *tenant, const char *site,
                const char *device_id, topic_class cls);

#endif
