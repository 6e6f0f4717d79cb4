/* net.c -- b_net_tx / b_net_rx over the machine's NIC table. */
#define _GNU_SOURCE
#include "machine.h"

/* b_net_tx -- send one Ethernet frame
 *  IN:  mem = frame, len = its length (14..1522), iid = interface
 * OUT:  nothing (no NICs are attached in this build) */
void b_net_tx(void *mem, u64 len, u64 iid)
{
	bm_error_clear();
	(void)mem; (void)len;
	if (bm_current() != NULL)
		bm_fail(BM_ERR_ARGUMENT, "no interface %llu", iid);
}

/* b_net_rx -- poll interface iid
 *  IN:  mem = where to store the frame's address, iid
 * OUT:  frame length, 0 if none */
u64 b_net_rx(void **mem, u64 iid)
{
	bm_error_clear();
	(void)mem;
	if (bm_current() == NULL)
		return 0;
	return bm_fail(BM_ERR_ARGUMENT, "no interface %llu", iid);
}

/* bm_net_status -- NET_STATUS: the MAC of interface iid as a 48-bit number, 0 if absent */
u64 bm_net_status(struct bm_machine *m, u64 iid) { (void)m; (void)iid; return 0; }

/* bm_net_config -- NET_CONFIG: accepted, nothing to configure */
u64 bm_net_config(struct bm_machine *m, u64 base, u64 iid) { (void)m; (void)base; (void)iid; return 0; }

/* bm_net_close_all -- close every NIC */
void bm_net_close_all(struct bm_machine *m) { (void)m; }
