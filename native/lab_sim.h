/* lab_sim.h -- the scheduling lab's model: a discrete-event simulator of k run-to-completion
 * or preemptive servers fed the same arrivals and service times as the real runs (lab.c). */
#ifndef BM_LAB_SIM_H
#define BM_LAB_SIM_H

#include "machine.h"

enum bm_sim_policy {
	BM_SIM_CFCFS = 0,       /* one shared FCFS queue, k servers */
	BM_SIM_DFCFS = 1,       /* one FCFS queue per server, request i goes to target[i] */
	BM_SIM_STEAL = 2,       /* per-server queues, an idle server takes from another's head */
	BM_SIM_PS = 3,          /* processor sharing over k servers */
	BM_SIM_PREEMPT = 4,     /* one shared queue, preemption every `quantum`, zero cost */
};

int bm_lab_simulate(u32 policy, u32 servers, u64 count, const double *arrival,
		    const double *service, const u32 *target, double quantum, double *finish);
int bm_lab_simulate_stalled(u32 policy, u32 servers, u64 count, const double *arrival,
			    const double *service, const u32 *target, const double *stall_start,
			    const double *stall_end, const u64 *first, int deadline, double *finish);

#endif
