/* pinger.c -- ping an IPv4 address COUNT times as fast as it answers, and check every reply.
 *
 *   baremetal run examples/pingd.py --nic socket:listen=127.0.0.1:7001 -- 10.0.0.2 --quiet &
 *   baremetal run examples/pinger.c --nic socket:connect=127.0.0.1:7001 -- 10.0.0.2 100000
 *
 * Arguments: TARGET [COUNT (default 10)] [SOURCE (our address; default TARGET with the last
 * byte 1, or 2 if that is TARGET)].  It resolves TARGET with ARP (asking every 200 ms for up to 20 s:
 * the other side may still be starting), then keeps WINDOW echo
 * requests in flight (a new one for each reply), so a receiver that keeps up never sees its
 * buffer overflow.  Each request carries a sequence number and a pattern that the reply must
 * give back unchanged.  Ends when every request was answered, or after 5 s without a reply.
 * Prints one summary line; exit status 0 when every request got its reply, 1 otherwise, 2 for
 * bad arguments.  Frames are built by hand, as a BareMetal app would, on interface 0.
 */
#include "libBareMetal.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WINDOW          128
#define PAYLOAD         56
#define ICMP_ID         0x6270           /* "bp" */
#define QUIET_NS        5000000000ull    /* give up after this long without a reply */
#define ARP_NS          20000000000ull   /* and after this long without an ARP reply (start-up) */

static unsigned char mac[6], peer_mac[6];
static unsigned char source[4], target[4];

static u64 now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (u64)t.tv_sec * 1000000000ull + (u64)t.tv_nsec;
}

/* checksum -- the Internet checksum (RFC 1071) of len bytes */
static unsigned short checksum(const unsigned char *p, unsigned len)
{
	unsigned long sum = 0;
	for (unsigned i = 0; i + 1 < len; i += 2)
		sum += (unsigned)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (unsigned)p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (unsigned short)~sum;
}

/* pattern -- the payload of request number n */
static void pattern(unsigned char *out, u64 n)
{
	memcpy(out, &n, 8);
	for (unsigned i = 8; i < PAYLOAD; i++)
		out[i] = (unsigned char)(n * 7 + i);
}

/* send_arp_request -- who has TARGET? tell SOURCE */
static void send_arp_request(void)
{
	unsigned char f[42];
	memset(f, 0xFF, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08; f[13] = 0x06;
	const unsigned char head[8] = { 0, 1, 8, 0, 6, 4, 0, 1 };
	memcpy(f + 14, head, 8);
	memcpy(f + 22, mac, 6);
	memcpy(f + 28, source, 4);
	memset(f + 32, 0, 6);
	memcpy(f + 38, target, 4);
	b_net_tx(f, sizeof f, 0);
}

/* send_echo -- echo request number n to TARGET */
static void send_echo(u64 n)
{
	unsigned char f[14 + 20 + 8 + PAYLOAD];
	unsigned char *ip = f + 14, *icmp = ip + 20;
	memcpy(f, peer_mac, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08; f[13] = 0x00;
	memset(ip, 0, 20);
	ip[0] = 0x45;
	ip[2] = (20 + 8 + PAYLOAD) >> 8; ip[3] = (20 + 8 + PAYLOAD) & 0xFF;
	ip[8] = 64; ip[9] = 1;
	memcpy(ip + 12, source, 4);
	memcpy(ip + 16, target, 4);
	unsigned short c = checksum(ip, 20);
	ip[10] = c >> 8; ip[11] = c & 0xFF;
	icmp[0] = 8; icmp[1] = 0; icmp[2] = icmp[3] = 0;
	icmp[4] = ICMP_ID >> 8; icmp[5] = ICMP_ID & 0xFF;
	icmp[6] = (n >> 8) & 0xFF; icmp[7] = n & 0xFF;
	pattern(icmp + 8, n);
	c = checksum(icmp, 8 + PAYLOAD);
	icmp[2] = c >> 8; icmp[3] = c & 0xFF;
	b_net_tx(f, sizeof f, 0);
}

/* is_arp_reply -- 1 if frame f (len bytes) says where TARGET is (peer_mac filled in) */
static int is_arp_reply(const unsigned char *f, u64 len)
{
	if (len < 42 || f[12] != 0x08 || f[13] != 0x06 || f[21] != 2 || memcmp(f + 28, target, 4))
		return 0;
	memcpy(peer_mac, f + 22, 6);
	return 1;
}

/* echo_number -- the request number an echo reply answers, or -1 if f is not a good reply */
static long long echo_number(const unsigned char *f, u64 len)
{
	const unsigned char *ip = f + 14, *icmp = f + 34;
	if (len < 14 + 20 + 8 + PAYLOAD || f[12] != 0x08 || f[13] != 0x00 || ip[0] != 0x45 || ip[9] != 1 ||
	    memcmp(ip + 12, target, 4) || memcmp(ip + 16, source, 4) || icmp[0] != 0 ||
	    icmp[4] != (ICMP_ID >> 8) || icmp[5] != (ICMP_ID & 0xFF) || checksum(icmp, 8 + PAYLOAD) != 0)
		return -1;
	u64 n;
	unsigned char expect[PAYLOAD];
	memcpy(&n, icmp + 8, 8);
	pattern(expect, n);
	if (memcmp(icmp + 8, expect, PAYLOAD) || icmp[6] != ((n >> 8) & 0xFF) || icmp[7] != (n & 0xFF))
		return -1;
	return (long long)n;
}

int main(int argc, char **argv)
{
	u64 count = argc > 2 ? strtoull(argv[2], NULL, 10) : 10;
	if (argc < 2 || inet_pton(AF_INET, argv[1], target) != 1 || count == 0 ||
	    (argc > 3 && inet_pton(AF_INET, argv[3], source) != 1)) {
		fprintf(stderr, "usage: pinger TARGET [COUNT] [SOURCE]\n");
		return 2;
	}
	if (argc <= 3) {
		memcpy(source, target, 4);
		source[3] = target[3] == 1 ? 2 : 1;
	}
	u64 m = b_system(NET_STATUS, 0, 0);
	if (m == 0) {
		fprintf(stderr, "pinger: the machine has no NIC\n");
		return 2;
	}
	for (int i = 0; i < 6; i++)
		mac[i] = (unsigned char)(m >> (40 - 8 * i));

	void *frame;
	u64 len, start = now_ns(), last = start, asked = 0;
	int resolved = 0;
	while (!resolved) {                      /* ARP, asking again every 200 ms */
		u64 t = now_ns();
		if (t - start > ARP_NS) {
			fprintf(stderr, "pinger: no ARP reply from %s\n", argv[1]);
			return 1;
		}
		if (asked == 0 || t - asked > 200000000ull) {
			send_arp_request();
			asked = t;
		}
		if ((len = b_net_rx(&frame, 0)) != 0)
			resolved = is_arp_reply(frame, len);
	}

	u64 sent = 0, answered = 0, bad = 0;
	unsigned char *seen = calloc(count, 1);
	if (seen == NULL)
		return 2;
	start = last = now_ns();
	while (answered < count) {
		while (sent < count && sent - answered < WINDOW)
			send_echo(sent++);
		len = b_net_rx(&frame, 0);
		if (len == 0) {
			if (now_ns() - last > QUIET_NS)
				break;
			continue;
		}
		long long n = echo_number(frame, len);
		if (n < 0 || (u64)n >= sent || seen[n]) {
			bad += !is_arp_reply(frame, len);
			continue;
		}
		seen[n] = 1;
		answered++;
		last = now_ns();
	}
	double seconds = (double)(now_ns() - start) / 1e9;
	printf("pinger: %llu sent, %llu replies, %llu lost, %llu bad, %.3f s, %.0f round trips/s\n",
	       (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)(sent - answered),
	       (unsigned long long)bad, seconds, seconds > 0 ? (double)answered / seconds : 0.0);
	free(seen);
	return answered == count && bad == 0 ? 0 : 1;
}
