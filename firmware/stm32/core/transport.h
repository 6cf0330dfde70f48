/* A byte stream to the broker: a USART wired to a TCP socket (QEMU), a TCP
 * socket on the host, or an ESP-AT Wi-Fi module's TCP link. */
#ifndef IOTGW_TRANSPORT_H
#define IOTGW_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct transport transport;
struct transport {
    void *ctx;
    /* Send all len bytes within timeout_ms. Returns len, or < 0 on error. */
    int (*send)(void *ctx, const uint8_t *buf, size_t len, uint32_t timeout_ms);
    /* Receive up to len bytes, waiting at most timeout_ms for the first one.
     * Returns the count (0 on timeout), or < 0 if the link is gone. */
    int (*recv)(void *ctx, uint8_t *buf, size_t len, uint32_t timeout_ms);
    /* Drop whatever was received but not read (before a new connection). May be NULL. */
    void (*flush)(void *ctx);
    /* (Re-)open the link before an MQTT CONNECT: returns 0 or < 0. NULL for a
     * link that is always there (a USART wired to the network). */
    int (*open)(void *ctx);
};

#endif
