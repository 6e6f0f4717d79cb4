/* net.h -- NICs: the table of backends b_net_tx/b_net_rx talk to. */
#ifndef BM_NET_H
#define BM_NET_H

#define BM_MAX_NICS 16

struct bm_nic;

struct bm_net {
	struct bm_nic *nics[BM_MAX_NICS];
	u32 num_nics;
};

u64 bm_net_status(struct bm_machine *m, u64 iid);           /* MAC as a 48-bit number, 0 if absent */
u64 bm_net_config(struct bm_machine *m, u64 base, u64 iid);
void bm_net_close_all(struct bm_machine *m);

#endif
