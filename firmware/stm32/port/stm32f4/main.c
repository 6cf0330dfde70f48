/* STM32F405 firmware entry: identity from compile-time settings (see the
 * Makefile and README), the portable device loop on this board. */
#include "board.h"
#include "device.h"
#include "seqstore.h"
#include "synthetic.h"

#ifndef CFG_DEVICE_ID
#error "build with make: CFG_DEVICE_ID and the rest of the identity come from the Makefile"
#endif
#ifndef FW_VERSION
#define FW_VERSION "0.1.0"
#endif
#if BOARD_QEMU
#define BOARD_NAME "netduinoplus2-qemu"
#else
#define BOARD_NAME "stm32f405"
#endif

static const device_config config = {
    .tenant = CFG_TENANT,
    .site = CFG_SITE,
    .device_id = CFG_DEVICE_ID,
    .username = CFG_MQTT_USER,
    .password = CFG_MQTT_PASS,
    .fw_version = FW_VERSION,
    .board = BOARD_NAME,
    .keepalive_s = CFG_KEEPALIVE_S,
    .backoff_base_ms = 250,
    .backoff_cap_ms = 8000,
    .max_publish_per_send = 8,
    .power = {.period_ms = CFG_SAMPLE_MS,
              .low_period_ms = CFG_SAMPLE_MS * 10u,
              .battery_low_mv = 3400,
              .battery_ok_mv = 3600,
              .batch = 8},
};

static void sample(uint64_t seq, device_sample *out) {
    /* No sensors in QEMU; on a real board replace this with the ADC and I2C
     * reads (battery: VBAT channel of ADC1 through its /2 divider). */
    synthetic_sample(seq, board_now_ms(), 3900, out);
}

static device dev;
static seqstore seq;

int main(void) {
    board_init();
    static device_platform plat;
    plat.now_ms = board_now_ms;
    plat.sleep_until = board_sleep_until;
    plat.log = board_log;
    plat.sample = sample;
    plat.net = board_net();
    if (seqstore_open(&seq, board_seq_flash(), CFG_SEQ_LEASE) != FLASH_OK) {
        board_log("SEQ_STORE_UNREADABLE");
        board_reset();
    }
    if (device_init(&dev, &config, &plat, &seq) != 0) {
        board_log("BAD_IDENTITY");
        for (;;) board_sleep_until(board_now_ms() + 1000u);
    }
    for (;;) device_step(&dev);
}
