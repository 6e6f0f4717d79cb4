/* libBareMetal.h -- the BareMetal application interface, hosted by pybaremetal.
 *
 * Same typedefs, prototypes and function codes as Return Infinity's libBareMetal.h, so an
 * app written for the real kernel compiles here unmodified.  On the real kernel these calls
 * go through the call table at 0x100010; here they are ordinary C functions of the
 * pybaremetal runtime (one implementation per call, shared with Python apps).
 */
#include <stdint.h>	/* upstream includes it too: apps may use uint64_t without their own */
#ifndef _LIBBAREMETAL_H
#define _LIBBAREMETAL_H

/* upstream's typedefs: u64 is uint64_t (unsigned long), so printf("%lu") etc. match */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#ifdef __cplusplus
extern "C" {
#endif

/* Input/Output */
u8 b_input(void);
void b_output(const char *str, u64 nbr);

/* Network */
void b_net_tx(void *mem, u64 len, u64 iid);
u64 b_net_rx(void **mem, u64 iid);

/* Non-volatile storage */
u64 b_nvs_read(void *mem, u64 start, u64 num, u64 drive);
u64 b_nvs_write(void *mem, u64 start, u64 num, u64 drive);

/* System */
u64 b_system(u64 function, u64 var1, u64 var2);

/* Hosted extension: the work queue of older BareMetal (upstream's legacy names).
 * Tasks are `void task(u64 arg)`. */
u64 b_smp_enqueue(void *code, u64 arg);
u64 b_smp_dequeue(u64 *arg);
void b_smp_run(u64 code, u64 arg);
void b_smp_wait(void);

#ifdef __cplusplus
}
#endif

/* Index for b_system calls */
#define TIMECOUNTER		0x00
#define FREE_MEMORY		0x01
#define WALLCLOCK		0x02
#define SMP_ID			0x10
#define SMP_NUMCORES		0x11
#define SMP_SET			0x12
#define SMP_GET			0x13
#define SMP_LOCK		0x14
#define SMP_UNLOCK		0x15
#define SMP_BUSY		0x16
#define TSC			0x1F
#define SCREEN_LFB_GET		0x20
#define SCREEN_X_GET		0x21
#define SCREEN_Y_GET		0x22
#define SCREEN_PPSL_GET		0x23
#define SCREEN_BPP_GET		0x24
#define NET_STATUS		0x30
#define NET_CONFIG		0x31
#define BUS_READ		0x50
#define BUS_WRITE		0x51
#define STDOUT_SET		0x52
#define STDOUT_GET		0x53
#define CALLBACK_TIMER		0x60
#define CALLBACK_NETWORK	0x61
#define CALLBACK_KEYBOARD	0x62
#define TIMER_SET		0x68
#define DUMP_MEM		0x70
#define DUMP_RAX		0x71
#define DELAY			0x72
#define SLEEP			0x73
#define RESET			0x7D
#define REBOOT			0x7E
#define SHUTDOWN		0x7F

#endif
