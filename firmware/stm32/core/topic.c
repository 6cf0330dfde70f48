#include "topic.h"

#include <string.h>

const char *topic_class_name(topic_class cls) {
    switch (cls) {
    case TOPIC_TELEMETRY: return "telemetry";
    case TOPIC_HEALTH: return "health";
    case TOPIC_CONTROL_ACK: return "control-ack";
    }
    return NULL;
}

int topic_segment_valid(const char *s) {
    if (s == NULL || s[0] == '\0') return 0;
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        char c = s[i];
        if (i >= 64) return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int topic_build(char *out, size_t cap, const char *tenant, const char *site,
                const char *device_id, topic_class cls) {
    const char *name = topic_class_name(cls);
    if (name == NULL || !topic_segment_valid(tenant) || !topic_segment_valid(site) ||
        !topic_segment_valid(device_id))
        return -1;
    const char *parts[] = {"v1", tenant, site, device_id, name};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t k = strlen(parts[i]);
        if (n + k + (i ? 1u : 0u) + 1u > cap) return -2;
        if (i) out[n++] = '/';
        memcpy(out + n, parts[i], k);
        n += k;
    }
    out[n] = '\0';
    return (int)n;
}
