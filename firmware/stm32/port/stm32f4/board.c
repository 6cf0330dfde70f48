#include "board.h"

#include <string.h>

#include "flash_ram.h"
#include "regs.h"

uint32_t board_core_hz = 16000000u;
static volatile uint32_t ticks_ms;

/* ---- clock ------------------------------------------------------------- */

/* Wait for a ready bit, bounded: a dead crystal must not hang the boot. */
__attribute__((unused)) static int wait_set(volatile uint32_t *reg, uint32_t mask, uint32_t want, uint32_t spins) {
    while (spins--)
        if ((*reg & mask) == want) return 1;
    return 0;
}

static void clock_init(void) {
#if BOARD_QEMU
    /* QEMU's netduinoplus2 has no RCC model (reads as 0): its CPU clock is
     * fixed at 168 MHz, which is what the PLL gives on the real chip. */
    board_core_hz = 168000000u;
#else
    /* HSE -> PLL: VCO = HSE/M * N = 336 MHz, SYSCLK = VCO/2 = 168 MHz,
     * USB/SDIO = VCO/7 = 48 MHz; APB1 = 42 MHz, APB2 = 84 MHz. */
    RCC_CR |= RCC_CR_HSEON;
    if (!wait_set(&RCC_CR, RCC_CR_HSERDY, RCC_CR_HSERDY, 500000u)) return; /* stay on HSI */
    const uint32_t m = HSE_HZ / 1000000u, n = 336u, p_div2 = 0u, q = 7u;
    RCC_PLLCFGR = m | n << 6 | p_div2 << 16 | RCC_PLLCFGR_SRC_HSE | q << 24;
    RCC_CR |= RCC_CR_PLLON;
    if (!wait_set(&RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY, 500000u)) return;
    FLASH_ACR = FLASH_ACR_LATENCY_5WS | FLASH_ACR_PRFTEN | FLASH_ACR_ICEN | FLASH_ACR_DCEN;
    RCC_CFGR = RCC_CFGR_PPRE1_DIV4 | RCC_CFGR_PPRE2_DIV2 | RCC_CFGR_SW_PLL;
    if (!wait_set(&RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL, 500000u)) return;
    board_core_hz = 168000000u;
#endif
}

void SysTick_Handler(void) { ticks_ms++; }

uint32_t board_now_ms(void) { return ticks_ms; }

void board_sleep_until(uint32_t t) {
    /* SysTick wakes the core every millisecond; a USART byte wakes it too. */
    while ((int32_t)(t - ticks_ms) > 0) cpu_wfi();
}

void board_reset(void) {
    SCB_AIRCR = AIRCR_SYSRESETREQ;
    for (;;) {}
}

/* ---- USARTs -------------------------------------------------------------- */

#define RX_RING 256u

typedef struct {
    uint32_t base;
    volatile uint8_t buf[RX_RING];
    volatile uint16_t head, tail; /* ISR writes head, reader moves tail */
    volatile uint32_t overruns;
} uart_rx;

static uart_rx net_rx = {.base = USART1_BASE};

static void uart_isr(uart_rx *u) {
    while (USART_SR(u->base) & (USART_SR_RXNE | USART_SR_ORE)) {
        uint8_t b = (uint8_t)USART_DR(u->base); /* also clears ORE */
        uint16_t next = (uint16_t)((u->head + 1u) % RX_RING);
        if (next == u->tail) u->overruns++;
        else {
            u->buf[u->head] = b;
            u->head = next;
        }
    }
}

void USART1_IRQHandler(void) { uart_isr(&net_rx); }
void USART2_IRQHandler(void) { (void)USART_DR(USART2_BASE); } /* the log port only talks */

static void uart_init(uint32_t base, uint32_t pclk_hz, uint32_t baud, int rx_irq) {
    USART_BRR(base) = (pclk_hz + baud / 2u) / baud; /* oversampling by 16 */
    USART_CR1(base) = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE | (rx_irq ? USART_CR1_RXNEIE : 0u);
}

static void uart_write(uint32_t base, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t spins = 1000000u; /* bounded: a stuck USART drops bytes, never hangs */
        while (!(USART_SR(base) & USART_SR_TXE) && spins) spins--;
        USART_DR(base) = p[i];
    }
}

void board_log(const char *line) {
    uart_write(USART2_BASE, (const uint8_t *)line, strlen(line));
    uart_write(USART2_BASE, (const uint8_t *)"\n", 1);
}

static int net_send(void *ctx, const uint8_t *buf, size_t len, uint32_t timeout_ms) {
    (void)ctx;
    (void)timeout_ms;
    uart_write(USART1_BASE, buf, len);
    return (int)len;
}

static int net_recv(void *ctx, uint8_t *buf, size_t len, uint32_t timeout_ms) {
    uart_rx *u = ctx;
    uint32_t deadline = ticks_ms + timeout_ms;
    while (u->head == u->tail) {
        if ((int32_t)(deadline - ticks_ms) <= 0) return 0;
        cpu_wfi();
    }
    size_t n = 0;
    while (n < len && u->tail != u->head) {
        buf[n++] = u->buf[u->tail];
        u->tail = (uint16_t)((u->tail + 1u) % RX_RING);
    }
    return (int)n;
}

static void net_flush(void *ctx) {
    uart_rx *u = ctx;
    irq_disable();
    u->tail = u->head;
    irq_enable();
}

static transport net = {&net_rx, net_send, net_recv, net_flush, NULL};

transport *board_net(void) { return &net; }

/* ---- seq store flash ---------------------------------------------------- */

#if BOARD_QEMU
/* QEMU maps the STM32 flash as ROM and has no flash interface model, so the
 * store lives in RAM that startup does not clear (.noinit): it survives a
 * warm reset (SYSRESETREQ) but not a restart of QEMU. */
#define SEQ_PAGE_SIZE 1024u
#define SEQ_PAGES 2u
__attribute__((section(".noinit"))) static uint8_t seq_mem[SEQ_PAGE_SIZE * SEQ_PAGES];
static flash_ram seq_flash_ram;

flash_dev *board_seq_flash(void) {
    flash_ram_init(&seq_flash_ram, seq_mem, SEQ_PAGE_SIZE, SEQ_PAGES);
    return &seq_flash_ram.dev;
}
#else
/* Sectors 1 and 2 (16 KiB each at 0x08004000): the linker script keeps code
 * out of them. Programmed 32 bits at a time (needs VDD 2.7-3.6 V). */
#define SEQ_SECTOR_FIRST 1u
#define SEQ_BASE 0x08004000u
#define SEQ_PAGE_SIZE 16384u
#define SEQ_PAGES 2u

static int flash_wait(void) {
    uint32_t spins = 50000000u; /* a 16 KiB sector erases in < 1 s */
    while ((FLASH_SR & FLASH_SR_BSY) && spins) spins--;
    uint32_t err = FLASH_SR & FLASH_SR_ERRORS;
    FLASH_SR = FLASH_SR_ERRORS; /* write 1 to clear */
    return (spins == 0 || err) ? FLASH_ERR_IO : FLASH_OK;
}

static void flash_unlock(void) {
    if (FLASH_CR & FLASH_CR_LOCK) {
        FLASH_KEYR = FLASH_KEY1;
        FLASH_KEYR = FLASH_KEY2;
    }
}

static int f4_erase(flash_dev *dev, uint32_t page) {
    if (page >= dev->page_count) return FLASH_ERR_RANGE;
    if (flash_wait() != FLASH_OK) return FLASH_ERR_IO;
    flash_unlock();
    FLASH_CR = FLASH_CR_PSIZE_X32 | FLASH_CR_SER | FLASH_CR_SNB(SEQ_SECTOR_FIRST + page);
    FLASH_CR |= FLASH_CR_STRT;
    int rc = flash_wait();
    FLASH_CR = FLASH_CR_LOCK;
    return rc;
}

static int f4_program(flash_dev *dev, uint32_t off, const uint8_t *data, uint32_t len) {
    if (off % FLASH_UNIT || len % FLASH_UNIT || off + len > dev->page_size * dev->page_count)
        return FLASH_ERR_RANGE;
    if (flash_wait() != FLASH_OK) return FLASH_ERR_IO;
    flash_unlock();
    FLASH_CR = FLASH_CR_PSIZE_X32 | FLASH_CR_PG;
    int rc = FLASH_OK;
    for (uint32_t i = 0; i < len && rc == FLASH_OK; i += 4u) {
        uint32_t w;
        memcpy(&w, data + i, 4);
        REG32(SEQ_BASE + off + i) = w;
        rc = flash_wait();
    }
    FLASH_CR = FLASH_CR_LOCK;
    return rc;
}

static int f4_read(flash_dev *dev, uint32_t off, uint8_t *dst, uint32_t len) {
    if (off + len > dev->page_size * dev->page_count) return FLASH_ERR_RANGE;
    memcpy(dst, (const void *)(SEQ_BASE + off), len);
    return FLASH_OK;
}

static flash_dev seq_flash = {SEQ_PAGE_SIZE, SEQ_PAGES, f4_erase, f4_program, f4_read};

flash_dev *board_seq_flash(void) { return &seq_flash; }
#endif

/* ---- init --------------------------------------------------------------- */

void board_init(void) {
    clock_init();
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIOAEN;
    RCC_APB2ENR |= RCC_APB2ENR_USART1EN;
    RCC_APB1ENR |= RCC_APB1ENR_USART2EN;
    /* PA9/PA10 = USART1 TX/RX, PA2/PA3 = USART2 TX/RX: alternate function 7. */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 18 | 0xFu << 4)) | (0xAu << 18) | (0xAu << 4);
    GPIOA_AFRH = (GPIOA_AFRH & ~(0xFFu << 4)) | (0x77u << 4);
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);
    uint32_t apb2 = board_core_hz == 168000000u ? 84000000u : board_core_hz;
    uint32_t apb1 = board_core_hz == 168000000u ? 42000000u : board_core_hz;
    uart_init(USART1_BASE, apb2, 115200u, 1);
    uart_init(USART2_BASE, apb1, 115200u, 0);
    NVIC_ISER(USART1_IRQn / 32u) = 1u << (USART1_IRQn % 32u);
    SYST_RVR = board_core_hz / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
}
