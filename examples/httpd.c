/* httpd.c -- a small web server for a machine: ARP, IPv4, ICMP echo and a minimal TCP that
 * serves one page per connection on port 80, polling b_net_rx on interface 0.
 *
 *   sudo ip netns add web && sudo ip link add bm0 type veth peer name bm1 netns web
 *   sudo ip link set bm0 up && sudo ip netns exec web ip addr add 10.0.0.1/24 dev bm1
 *   sudo ip netns exec web ip link set bm1 up
 *   sudo .venv/bin/baremetal run examples/httpd.c --nic packet:bm0 -- 10.0.0.2
 *   sudo ip netns exec web curl http://10.0.0.2/       # from another terminal
 *
 * Arguments: ADDRESS [PAGES: exit after serving this many (default: serve until killed)].
 * The MAC is the NIC's own (NET_STATUS).  Frames are built by hand, as a BareMetal app would.
 *
 * The TCP is stateless, like SYN cookies: every reply is computed from the segment it answers.
 * Our initial sequence number is a hash of the client's address and port (and a per-run
 * secret), so a later segment of the same connection tells where we are:
 *   SYN                      -> SYN|ACK (MSS 1460)
 *   data, ack = ISN + 1      -> the whole response in one segment, with FIN (ACK|PSH|FIN)
 *   FIN                      -> ACK; when it acknowledges our FIN too, the page was served
 *   anything for another port-> RST (connection refused), RST -> nothing
 * Retransmitted segments get the same replies again, so a lost one is repaired by the
 * client's retransmission.  A request must fit in one segment (curl's and browsers' do).
 */
#include "libBareMetal.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PORT 80
#define MSS  1460

static unsigned char mac[6], address[4];
static unsigned secret;
static unsigned short ip_id;

static const char page_body[] =
	"<!doctype html>\n<html><head><title>BareMetal</title></head>\n"
	"<body><h1>Hello from a BareMetal machine</h1>\n"
	"<p>Served by examples/httpd.c: ARP, IPv4, ICMP and a tiny TCP over b_net_tx / b_net_rx.</p>\n"
	"</body></html>\n";
static char response[512];
static unsigned response_len;

static unsigned get16(const unsigned char *p) { return (unsigned)(p[0] << 8 | p[1]); }
static unsigned get32(const unsigned char *p) { return (unsigned)p[0] << 24 | (unsigned)p[1] << 16 | (unsigned)p[2] << 8 | p[3]; }
static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put32(unsigned char *p, unsigned v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }

/* sum16 -- ones' complement sum (unfolded) of len bytes as big-endian 16-bit words */
static unsigned long sum16(const unsigned char *p, unsigned len, unsigned long sum)
{
	for (; len >= 2; p += 2, len -= 2)
		sum += get16(p);
	if (len)
		sum += (unsigned)p[0] << 8;
	return sum;
}

/* fold -- the Internet checksum of an unfolded sum */
static unsigned fold(unsigned long sum)
{
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (unsigned)~sum & 0xFFFF;
}

/* send_ip -- wrap payload (len bytes, protocol proto) in IPv4 + Ethernet to dst_ip / dst_mac
 * and send it; a TCP payload gets its checksum here */
static void send_ip(const unsigned char *dst_mac, const unsigned char *dst_ip, unsigned char proto,
		    unsigned char *payload, unsigned len)
{
	unsigned char f[1514];
	unsigned char *ip = f + 14;
	if (len > sizeof f - 34)
		return;
	memcpy(f, dst_mac, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0800);
	memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, 20 + len);
	put16(ip + 4, ip_id++);
	ip[6] = 0x40;                                  /* don't fragment */
	ip[8] = 64;
	ip[9] = proto;
	memcpy(ip + 12, address, 4);
	memcpy(ip + 16, dst_ip, 4);
	put16(ip + 10, fold(sum16(ip, 20, 0)));
	if (proto == 6) {                              /* TCP: pseudo header + segment */
		put16(payload + 16, 0);
		put16(payload + 16, fold(sum16(payload, len, sum16(ip + 12, 8, 6u + len))));
	}
	memcpy(ip + 20, payload, len);
	b_net_tx(f, 34 + len, 0);
}

/* arp -- answer an ARP request for our address */
static void arp(const unsigned char *f, u64 len)
{
	if (len < 42 || get16(f + 14) != 1 || get16(f + 16) != 0x0800 || get16(f + 20) != 1 ||
	    memcmp(f + 38, address, 4))
		return;
	unsigned char r[42];
	memcpy(r, f + 22, 6);
	memcpy(r + 6, mac, 6);
	put16(r + 12, 0x0806);
	memcpy(r + 14, f + 14, 6);
	put16(r + 20, 2);                              /* reply */
	memcpy(r + 22, mac, 6);
	memcpy(r + 28, address, 4);
	memcpy(r + 32, f + 22, 10);                    /* to the asker's MAC and address */
	b_net_tx(r, sizeof r, 0);
}

/* icmp -- answer an echo request (icmp points at the ICMP message, len bytes) */
static void icmp(const unsigned char *f, const unsigned char *msg, unsigned len)
{
	unsigned char r[1480];
	if (len < 8 || len > sizeof r || msg[0] != 8)
		return;
	memcpy(r, msg, len);
	r[0] = 0;                                      /* echo reply */
	put16(r + 2, 0);
	put16(r + 2, fold(sum16(r, len, 0)));
	send_ip(f + 6, f + 26, 1, r, len);
}

/* isn -- our initial sequence number for the client at ip:port */
static unsigned isn(const unsigned char *ip, unsigned port)
{
	unsigned h = secret ^ get32(ip) ^ (port * 0x9E3779B1u);
	h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
	return h;
}

/* tcp_reply -- send a segment to the sender of f (segment seg): flags, seq, ack, data */
static void tcp_reply(const unsigned char *f, const unsigned char *seg, unsigned flags, unsigned seq,
		      unsigned ack, const void *data, unsigned data_len)
{
	unsigned char r[20 + 4 + 1400];
	unsigned header = (flags & 0x02) ? 24 : 20;   /* a SYN carries the MSS option */
	if (data_len > sizeof r - header)
		return;
	memset(r, 0, header);
	put16(r, get16(seg + 2));
	put16(r + 2, get16(seg));
	put32(r + 4, seq);
	put32(r + 8, ack);
	r[12] = (unsigned char)((header / 4) << 4);
	r[13] = (unsigned char)flags;
	put16(r + 14, 8192);                           /* window */
	if (header == 24) {
		r[20] = 2; r[21] = 4;
		put16(r + 22, MSS);
	}
	memcpy(r + header, data, data_len);
	send_ip(f + 6, f + 26, 6, r, header + data_len);
}

enum { FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10 };

/* tcp -- answer one segment (seg, len bytes); returns 1 when a connection finished its page */
static int tcp(const unsigned char *f, const unsigned char *seg, unsigned len)
{
	if (len < 20)
		return 0;
	unsigned offset = (seg[12] >> 4) * 4u, flags = seg[13];
	if (offset < 20 || offset > len || (flags & RST))
		return 0;
	unsigned seq = get32(seg + 4), ack = get32(seg + 8), data_len = len - offset;
	const unsigned char *data = seg + offset;
	if (get16(seg + 2) != PORT) {                  /* nothing listens there: refuse */
		if (flags & ACK)
			tcp_reply(f, seg, RST, ack, 0, NULL, 0);
		else
			tcp_reply(f, seg, RST | ACK, 0, seq + data_len + ((flags & SYN) ? 1 : 0), NULL, 0);
		return 0;
	}
	unsigned ours = isn(f + 26, get16(seg));
	if ((flags & SYN) && !(flags & ACK)) {
		tcp_reply(f, seg, SYN | ACK, ours, seq + 1, NULL, 0);
		return 0;
	}
	if (!(flags & ACK))
		return 0;
	if (data_len > 0 && ack == ours + 1) {       /* the request: answer it and close our side */
		int known = data_len >= 4 && (!memcmp(data, "GET ", 4) || !memcmp(data, "HEAD", 4));
		if (known)
			tcp_reply(f, seg, ACK | PSH | FIN, ours + 1, seq + data_len, response, response_len);
		else
			tcp_reply(f, seg, RST | ACK, ours + 1, seq + data_len, NULL, 0);
		return 0;
	}
	if (flags & FIN) {                             /* their close: acknowledge it */
		tcp_reply(f, seg, ACK, ack, seq + data_len + 1, NULL, 0);
		return ack == ours + 1 + response_len + 1; /* they had our page and our FIN */
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || inet_pton(AF_INET, argv[1], address) != 1) {
		fprintf(stderr, "usage: httpd ADDRESS [PAGES]\n");
		return 2;
	}
	unsigned long pages = argc > 2 ? strtoul(argv[2], NULL, 10) : 0, served = 0;
	u64 m = b_system(NET_STATUS, 0, 0);
	if (m == 0) {
		fprintf(stderr, "httpd: the machine has no NIC\n");
		return 2;
	}
	for (int i = 0; i < 6; i++)
		mac[i] = (unsigned char)(m >> (40 - 8 * i));
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	secret = (unsigned)(now.tv_nsec ^ now.tv_sec * 2654435761u);
	response_len = (unsigned)snprintf(response, sizeof response,
		"HTTP/1.0 200 OK\r\nServer: BareMetal httpd\r\nContent-Type: text/html\r\n"
		"Content-Length: %u\r\nConnection: close\r\n\r\n%s", (unsigned)strlen(page_body), page_body);
	char line[128];
	int n = snprintf(line, sizeof line, "httpd: serving http://%s/ at %02x:%02x:%02x:%02x:%02x:%02x\n",
			 argv[1], mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	b_output(line, (u64)n);

	while (pages == 0 || served < pages) {
		void *mem;
		u64 len = b_net_rx(&mem, 0);
		const unsigned char *f = mem;
		if (len < 14)
			continue;
		unsigned type = get16(f + 12);
		if (type == 0x0806) {
			arp(f, len);
			continue;
		}
		if (type != 0x0800 || len < 34 || (f[14] >> 4) != 4 || memcmp(f + 30, address, 4))
			continue;
		unsigned ihl = (f[14] & 0x0F) * 4u, total = get16(f + 16);
		if (ihl < 20 || total < ihl || 14 + total > len || (get16(f + 20) & 0x3FFF))
			continue;                          /* bad header or a fragment */
		unsigned long ip_sum = sum16(f + 14, ihl, 0);
		if (fold(ip_sum) != 0)
			continue;
		const unsigned char *payload = f + 14 + ihl;
		unsigned payload_len = total - ihl;
		if (f[23] == 1 && fold(sum16(payload, payload_len, 0)) == 0)
			icmp(f, payload, payload_len);
		else if (f[23] == 6 && fold(sum16(payload, payload_len, sum16(f + 26, 8, 6u + payload_len))) == 0)
			served += (unsigned long)tcp(f, payload, payload_len);
	}
	n = snprintf(line, sizeof line, "httpd: %lu pages served\n", served);
	b_output(line, (u64)n);
	return 0;
}
