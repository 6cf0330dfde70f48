/* ESP-AT Wi-Fi module driver (ESP8266 / ESP32 running Espressif's AT
 * firmware) over a UART: join an access point (AT+CWJAP), open one TCP link
 * (AT+CIPSTART), send (AT+CIPSEND, '>' prompt, SEND OK) and receive (+IPD,n:
 * followed by n raw bytes, which may arrive in the middle of any other
 * response). It exposes the TCP link as a transport, so the MQTT client runs
 * over it unchanged.
 *
 * Single link mode (AT+CIPMUX=0), non-transparent (AT+CIPMODE=0).
 */
#ifndef IOTGW_ESP_AT_H
#define IOTGW_ESP_AT_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

#ifndef ESP_AT_RX_MAX
#define ESP_AT_RX_MAX 512
#endif
#define ESP_AT_LINE_MAX 96

typedef enum {
    ESP_OK = 0,
    ESP_ERR_TIMEOUT = -1,
    ESP_ERR_FAIL = -2,    /* ERROR / FAIL / SEND FAIL */
    ESP_ERR_UART = -3,
    ESP_ERR_CLOSED = -4,  /* the TCP link is closed */
    ESP_ERR_ARG = -5
} esp_status;

typedef struct {
    transport *uart;
    uint32_t (*now_ms)(void);
    /* Response line being assembled (without CR LF). */
    char line[ESP_AT_LINE_MAX];
    size_t line_len;
    /* +IPD payload bytes still to come, and the received TCP bytes not yet read. */
    uint32_t ipd_left;
    uint8_t rx[ESP_AT_RX_MAX];
    size_t rx_head, rx_count;
    uint32_t rx_overflow; /* TCP bytes lost because rx was full */
    int prompt;           /* '>' seen */
    int link_up;
    int wifi_got_ip;
    int cwjap_error; /* the n of the last +CWJAP:n (1 timeout, 2 password, 3 no AP, 4 failed) */
    transport tcp;   /* the TCP link as a transport (ctx = this driver) */
    /* Where tcp.open goes: set with esp_at_target(). */
    const char *ssid, *password, *host;
    uint16_t port;
    uint32_t open_timeout_ms;
} esp_at;

void esp_at_init(esp_at *e, transport *uart, uint32_t (*now_ms)(void));
/* AT, ATE0 (no echo), AT+CWMODE=1 (station), AT+CIPMUX=0. */
esp_status esp_at_setup(esp_at *e, uint32_t timeout_ms);
/* AT+CWJAP="ssid","password" (", \ and , escaped). */
esp_status esp_at_join(esp_at *e, const char *ssid, const char *password, uint32_t timeout_ms);
/* AT+CIPSTART="TCP","host",port. "ALREADY CONNECTED" counts as success. */
esp_status esp_at_connect(esp_at *e, const char *host, uint16_t port, uint32_t timeout_ms);
/* AT+CIPSEND=len, wait for '>', write the bytes, wait for SEND OK. len <= 2048. */
esp_status esp_at_send(esp_at *e, const uint8_t *data, size_t len, uint32_t timeout_ms);
/* Read received TCP bytes, waiting up to timeout_ms for the first. Returns the
 * count, 0 on timeout, ESP_ERR_CLOSED once the link is closed and drained. */
int esp_at_recv(esp_at *e, uint8_t *buf, size_t len, uint32_t timeout_ms);
esp_status esp_at_close(esp_at *e, uint32_t timeout_ms);
/* Let tcp.open (called by mqtt_connect) re-join the access point when the
 * module has no IP and re-open the TCP link when it is closed. */
void esp_at_target(esp_at *e, const char *ssid, const char *password, const char *host,
                   uint16_t port, uint32_t timeout_ms);

#endif
