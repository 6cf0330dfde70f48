#include <stdio.h>
#include <string.h>

#include "esp_at.h"
#include "fakes.h"
#include "mqtt.h"
#include "unit.h"

extern const char *transcript_dir;

static int load(script *s, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", transcript_dir, name);
    script_init(s);
    if (script_load_transcript(s, path) != 0) {
        fprintf(stderr, "  cannot read %s\n", path);
        return 0;
    }
    return s->n_steps > 0;
}

static void mqtt_over_esp_at(size_t chunk) {
    static script s;
    REQUIRE(load(&s, "esp_at_mqtt.at"));
    s.max_recv_chunk = chunk;
    static esp_at e;
    fake_now = 0;
    esp_at_init(&e, &s.t, fake_now_ms);
    REQUIRE(esp_at_setup(&e, 1000) == ESP_OK);
    REQUIRE(esp_at_join(&e, "field-net", "s3cret", 15000) == ESP_OK);
    CHECK(e.wifi_got_ip);
    REQUIRE(esp_at_connect(&e, "gw.local", 1883, 5000) == ESP_OK);
    CHECK(e.link_up);
    static mqtt_client c;
    mqtt_init(&c, &e.tcp, fake_now_ms, 2000, 0);
    mqtt_connect_opts o = {"stm32-01", "dev", "pw", 60, 0};
    CHECK(mqtt_connect(&c, &o) == MQTT_OK);
    CHECK(mqtt_publish_qos1(&c, "a/b", (const uint8_t *)"hi", 2, 1, 0) == MQTT_OK);
    CHECK(script_done(&s));
    if (s.mismatch) fprintf(stderr, "  %s\n", s.mismatch_info);
    CHECK_EQ_U(e.rx_overflow, 0);
}

static void esp_at_whole_reads(void) { mqtt_over_esp_at(0); }
static void esp_at_byte_by_byte(void) { mqtt_over_esp_at(1); }
static void esp_at_three_bytes(void) { mqtt_over_esp_at(3); }

static void esp_at_failure_paths(void) {
    static script s;
    REQUIRE(load(&s, "esp_at_failures.at"));
    static esp_at e;
    fake_now = 0;
    esp_at_init(&e, &s.t, fake_now_ms);
    CHECK(esp_at_join(&e, "field,net", "wrong", 15000) == ESP_ERR_FAIL);
    CHECK(e.cwjap_error == 2); /* wrong password */
    CHECK(esp_at_join(&e, "field,net", "s3cr\"t", 15000) == ESP_OK);
    CHECK(esp_at_connect(&e, "broker.invalid", 1883, 5000) == ESP_ERR_FAIL);
    CHECK(!e.link_up);
    CHECK(esp_at_connect(&e, "gw.local", 1883, 5000) == ESP_OK);
    CHECK(esp_at_connect(&e, "gw.local", 1883, 5000) == ESP_OK); /* ALREADY CONNECTED */
    const uint8_t ping[] = {0xC0, 0x00};
    CHECK(esp_at_send(&e, ping, 2, 5000) == ESP_OK);
    uint8_t buf[8];
    CHECK(esp_at_recv(&e, buf, sizeof buf, 1000) == 2);
    CHECK(buf[0] == 0xD0 && buf[1] == 0x00);
    CHECK(esp_at_recv(&e, buf, sizeof buf, 1000) == ESP_ERR_CLOSED);
    e.link_up = 1; /* the driver is told nothing; the module refuses the send */
    CHECK(esp_at_send(&e, ping, 2, 5000) == ESP_ERR_CLOSED);
    CHECK(script_done(&s));
    if (s.mismatch) fprintf(stderr, "  %s\n", s.mismatch_info);
}

static void esp_at_times_out(void) {
    script s;
    script_init(&s);
    script_add(&s, '>', "AT\r\n", 4); /* the module never answers */
    esp_at e;
    fake_now = 0;
    esp_at_init(&e, &s.t, fake_now_ms);
    CHECK(esp_at_setup(&e, 700) == ESP_ERR_TIMEOUT);
    CHECK(fake_now >= 700 && fake_now < 800);
}

static void esp_at_reopens_link_for_mqtt_connect(void) {
    static script s;
    REQUIRE(load(&s, "esp_at_reopen.at"));
    static esp_at e;
    fake_now = 0;
    esp_at_init(&e, &s.t, fake_now_ms);
    esp_at_target(&e, "field-net", "s3cret", "gw.local", 1883, 5000);
    static mqtt_client c;
    mqtt_init(&c, &e.tcp, fake_now_ms, 2000, 0);
    mqtt_connect_opts o = {"", NULL, NULL, 0, 1}; /* 3.1.1: empty id with clean session */
    CHECK(mqtt_connect(&c, &o) == MQTT_OK);
    CHECK(e.wifi_got_ip);
    uint8_t buf[4];
    CHECK(esp_at_recv(&e, buf, sizeof buf, 100) == ESP_ERR_CLOSED); /* the server closed it */
    CHECK(mqtt_connect(&c, &o) == MQTT_OK);                      /* CIPSTART again, no CWJAP */
    CHECK(script_done(&s));
    if (s.mismatch) fprintf(stderr, "  %s\n", s.mismatch_info);
}

UNIT_SUITE(esp_at) = {
    {"esp_at: MQTT over the AT transcript", esp_at_whole_reads},
    {"esp_at: same transcript, UART bytes one at a time", esp_at_byte_by_byte},
    {"esp_at: same transcript, UART bytes three at a time", esp_at_three_bytes},
    {"esp_at: failure transcript (FAIL, ERROR, ALREADY CONNECTED, CLOSED)", esp_at_failure_paths},
    {"esp_at: silent module times out", esp_at_times_out},
    {"esp_at: mqtt_connect re-joins and re-opens the link", esp_at_reopens_link_for_mqtt_connect},
    {0, 0},
};
