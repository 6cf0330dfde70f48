#include <string.h>

#include "topic.h"
#include "unit.h"

static void builds_each_class(void) {
    char out[128];
    CHECK(topic_build(out, sizeof out, "acme", "aal", "stm32-01", TOPIC_TELEMETRY) == 30);
    CHECK_STR(out, "v1/acme/aal/stm32-01/telemetry");
    CHECK(topic_build(out, sizeof out, "acme", "aal", "stm32-01", TOPIC_HEALTH) > 0);
    CHECK_STR(out, "v1/acme/aal/stm32-01/health");
    CHECK(topic_build(out, sizeof out, "acme", "aal", "stm32-01", TOPIC_CONTROL_ACK) > 0);
    CHECK_STR(out, "v1/acme/aal/stm32-01/control-ack");
    CHECK(topic_build(out, sizeof out, "acme", "aal", "stm32-01", (topic_class)7) == -1);
}

static void refuses_wildcards_and_separators(void) {
    char out[128];
    const char *bad[] = {"", "a/b", "+", "#", "a b", "dev\xc3\xa9", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(topic_build(out, sizeof out, bad[i], "aal", "d1", TOPIC_TELEMETRY) == -1);
        CHECK(topic_build(out, sizeof out, "acme", bad[i], "d1", TOPIC_TELEMETRY) == -1);
        CHECK(topic_build(out, sizeof out, "acme", "aal", bad[i], TOPIC_TELEMETRY) == -1);
    }
    char id64[65], id65[66];
    memset(id64, 'D', 64);
    id64[64] = 0;
    memset(id65, 'D', 65);
    id65[65] = 0;
    CHECK(topic_segment_valid(id64));
    CHECK(!topic_segment_valid(id65));
    CHECK(topic_segment_valid("A_b-9"));
}

static void too_small_buffer(void) {
    char out[31];
    CHECK(topic_build(out, 30, "acme", "aal", "stm32-01", TOPIC_TELEMETRY) == -2);
    CHECK(topic_build(out, 31, "acme", "aal", "stm32-01", TOPIC_TELEMETRY) == 30);
}

UNIT_SUITE(topic) = {
    {"topic: v1/{tenant}/{site}/{device_id}/{class}", builds_each_class},
    {"topic: refuses wildcards and separators", refuses_wildcards_and_separators},
    {"topic: buffer too small", too_small_buffer},
    {0, 0},
};
