#include <math.h>
#include <string.h>

#include "envelope.h"
#include "unit.h"

static void basic_body(void) {
    env_metric m[] = {{"temp_c", 21.5}, {"humidity_pct", 40}, {"battery_v", 3.7}};
    env_tag t[] = {{"fw", "0.1.0"}, {"board", "netduinoplus2"}};
    env_reading r = {42, NULL, m, 3, t, 2};
    char out[256];
    size_t len = 0;
    REQUIRE(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    CHECK_STR(out, "{\"seq\":42,\"metrics\":{\"temp_c\":21.5,\"humidity_pct\":40,\"battery_v\":3.7},"
                   "\"tags\":{\"fw\":\"0.1.0\",\"board\":\"netduinoplus2\"}}");
    CHECK_EQ_U(len, strlen(out));
}

static void with_ts_and_no_tags(void) {
    env_metric m[] = {{"v", -0.25}};
    env_reading r = {0, "2025-09-23T11:18:41.120Z", m, 1, NULL, 0};
    char out[128];
    size_t len;
    REQUIRE(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    CHECK_STR(out, "{\"seq\":0,\"ts\":\"2025-09-23T11:18:41.120Z\",\"metrics\":{\"v\":-0.25},\"tags\":{}}");
    r.ts = "2025-09-23T11:18:41Z";
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    const char *bad_ts[] = {"2025-09-23 11:18:41Z", "2025-09-23T11:18:41", "2025-09-23T11:18:41+02:00",
                            "yesterday", ""};
    for (size_t i = 0; i < sizeof bad_ts / sizeof bad_ts[0]; i++) {
        r.ts = bad_ts[i];
        CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_TS);
    }
}

static void key_rule(void) {
    /* ^[a-z][a-z0-9_]{0,31}$ */
    CHECK(env_key_valid("a"));
    CHECK(env_key_valid("temp_c"));
    CHECK(env_key_valid("a0_"));
    CHECK(env_key_valid("abcdefghijklmnopqrstuvwxyz012345")); /* 32 */
    CHECK(!env_key_valid("abcdefghijklmnopqrstuvwxyz0123456")); /* 33 */
    CHECK(!env_key_valid(""));
    CHECK(!env_key_valid("_a"));
    CHECK(!env_key_valid("0a"));
    CHECK(!env_key_valid("Temp"));
    CHECK(!env_key_valid("temp-c"));
    CHECK(!env_key_valid("temp c"));
    CHECK(!env_key_valid("t\xc3\xa9"));
    CHECK(!env_key_valid(NULL));
}

static void refuses_what_gateway_rejects(void) {
    char out[4096];
    size_t len;
    env_metric one[] = {{"ok", 1}};
    env_reading r = {1, NULL, one, 1, NULL, 0};
    /* bad metric key, duplicate key */
    env_metric badkey[] = {{"Temp", 1}};
    r.metrics = badkey;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_KEY);
    env_metric dup[] = {{"a", 1}, {"a", 2}};
    r.metrics = dup;
    r.n_metrics = 2;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_KEY);
    /* non-finite and huge */
    env_metric nf[] = {{"a", NAN}};
    r.metrics = nf;
    r.n_metrics = 1;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    nf[0].value = INFINITY;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    nf[0].value = -INFINITY;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    nf[0].value = 1e300;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    /* no metrics */
    r.n_metrics = 0;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_EMPTY);
    /* 32 metrics pass, 33 do not */
    static char keys[33][16];
    env_metric many[33];
    for (int i = 0; i < 33; i++) {
        snprintf(keys[i], sizeof keys[i], "m%d", i);
        many[i].key = keys[i];
        many[i].value = i;
    }
    r.metrics = many;
    r.n_metrics = 32;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    r.n_metrics = 33;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_TOO_MANY);
    /* 16 tags pass, 17 do not */
    r.metrics = one;
    r.n_metrics = 1;
    env_tag tags[17];
    for (int i = 0; i < 17; i++) {
        tags[i].key = keys[i];
        tags[i].value = "x";
    }
    r.tags = tags;
    r.n_tags = 16;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    r.n_tags = 17;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_TOO_MANY);
    /* tag value: 64 chars pass, 65 do not; control and non-ASCII bytes do not */
    char v64[65], v65[66];
    memset(v64, 'x', 64);
    v64[64] = 0;
    memset(v65, 'x', 65);
    v65[65] = 0;
    env_tag t1[] = {{"t", v64}};
    r.tags = t1;
    r.n_tags = 1;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    t1[0].value = v65;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    t1[0].value = "a\nb";
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    t1[0].value = "caf\xc3\xa9";
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    t1[0].value = NULL;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_VALUE);
    /* seq above 2^63-1 */
    r.n_tags = 0;
    r.seq = (uint64_t)INT64_MAX;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    CHECK(strstr(out, "\"seq\":9223372036854775807,") != NULL);
    r.seq = (uint64_t)INT64_MAX + 1u;
    CHECK(env_encode(&r, out, sizeof out, &len) == ENV_ERR_SEQ);
}

static void escapes_quotes_in_tags(void) {
    env_metric m[] = {{"a", 1}};
    env_tag t[] = {{"note", "say \"hi\" \\o/"}};
    env_reading r = {7, NULL, m, 1, t, 1};
    char out[128];
    size_t len;
    REQUIRE(env_encode(&r, out, sizeof out, &len) == ENV_OK);
    CHECK_STR(out, "{\"seq\":7,\"metrics\":{\"a\":1},\"tags\":{\"note\":\"say \\\"hi\\\" \\\\o/\"}}");
}

static void buffer_too_small_is_an_error(void) {
    env_metric m[] = {{"temp_c", 21.5}};
    env_reading r = {42, NULL, m, 1, NULL, 0};
    char out[64];
    size_t len, full;
    REQUIRE(env_encode(&r, out, sizeof out, &full) == ENV_OK);
    for (size_t cap = 0; cap <= full; cap++) /* the NUL needs one more byte */
        CHECK(env_encode(&r, out, cap, &len) == ENV_ERR_SPACE);
    CHECK(env_encode(&r, out, full + 1, &len) == ENV_OK);
}

static void number_format(void) {
    struct {
        double v;
        const char *want;
    } cases[] = {{0, "0"},          {-0.0, "0"},          {1, "1"},
                 {-1, "-1"},        {21.5, "21.5"},       {0.1, "0.1"},
                 {3.14159265, "3.141593"}, {-0.0000004, "0"}, {0.9999996, "1"},
                 {123456789012345.0, "123456789012345"}, {1e-6, "0.000001"}, {-273.15, "-273.15"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[40];
        REQUIRE(env_format_number(cases[i].v, out, sizeof out) > 0);
        CHECK_STR(out, cases[i].want);
    }
    char out[40];
    CHECK(env_format_number(1e15, out, sizeof out) == 0);
    CHECK(env_format_number(NAN, out, sizeof out) == 0);
    CHECK(env_format_number(21.5, out, 4) == 0); /* "21.5" + NUL needs 5 */
    CHECK(env_format_number(21.5, out, 5) == 4);
}

UNIT_SUITE(envelope) = {
    {"envelope: basic body", basic_body},
    {"envelope: ts shape, empty tags", with_ts_and_no_tags},
    {"envelope: key rule ^[a-z][a-z0-9_]{0,31}$", key_rule},
    {"envelope: refuses what the gateway rejects", refuses_what_gateway_rejects},
    {"envelope: escapes quotes in tags", escapes_quotes_in_tags},
    {"envelope: buffer too small is an error", buffer_too_small_is_an_error},
    {"envelope: number format", number_format},
    {0, 0},
};
