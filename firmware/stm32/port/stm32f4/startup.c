/* Reset and vector table for the STM32F405: copy .data from flash, zero .bss,
 * then main(). .noinit is left alone so that it survives a warm reset. */
#include <stdint.h>

#include "regs.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);

void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);
void SysTick_Handler(void);
void USART1_IRQHandler(void);
void USART2_IRQHandler(void);

void Default_Handler(void) {
    for (;;) cpu_wfi();
}

/* A fault resets the device: the seq store and the ring's successor (after
 * reboot) carry on, which beats hanging in the field. */
void HardFault_Handler(void) { SCB_AIRCR = AIRCR_SYSRESETREQ; for (;;) {} }

void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void DebugMon_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));

#define N_IRQ 82u /* STM32F405: IRQ 0..81 */

__attribute__((section(".isr_vector"), used)) void (*const vector_table[16 + N_IRQ])(void) = {
    [0] = (void (*)(void))(&_estack),
    [1] = Reset_Handler,
    [2] = NMI_Handler,
    [3] = HardFault_Handler,
    [4] = MemManage_Handler,
    [5] = BusFault_Handler,
    [6] = UsageFault_Handler,
    [11] = SVC_Handler,
    [12] = DebugMon_Handler,
    [14] = PendSV_Handler,
    [15] = SysTick_Handler,
    [16 ... 16 + USART1_IRQn - 1] = Default_Handler,
    [16 + USART1_IRQn] = USART1_IRQHandler,
    [16 + USART2_IRQn] = USART2_IRQHandler,
    [16 + USART2_IRQn + 1 ... 16 + N_IRQ - 1] = Default_Handler,
};

void Reset_Handler(void) {
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    SCB_VTOR = 0x08000000u;
    (void)main();
    for (;;) cpu_wfi();
}
