/* The STM32F405 board layer: clock, millisecond tick, two USARTs (USART1:
 * the MQTT byte stream; USART2: the log), the seq store's flash. */
#ifndef STM32F4_BOARD_H
#define STM32F4_BOARD_H

#include <stdint.h>

#include "flash.h"
#include "transport.h"

/* Core clock after board_init: 168 MHz from the PLL, or 16 MHz (HSI) if the
 * crystal does not start. */
extern uint32_t board_core_hz;

void board_init(void);
uint32_t board_now_ms(void);
void board_sleep_until(uint32_t t);
/* The log USART: blocking writes of a line and a newline. */
void board_log(const char *line);
/* The USART1 byte stream as a transport. */
transport *board_net(void);
/* The flash region of the seq store (two sectors on a real board, RAM in QEMU). */
flash_dev *board_seq_flash(void);
void board_reset(void);

#endif
