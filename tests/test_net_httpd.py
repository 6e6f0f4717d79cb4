"""examples/httpd.c, a C web server for a machine, answers curl from a namespace the test
creates: over veth with the peer's checksum offload left on (the packet NIC finishes the
partial checksums), and over a TAP."""
import os
import subprocess
import sys

import pytest
from pyroute2 import IPRoute, NetNS, netns

from netns_helper import VethNamespace, disable_ipv6, unique

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One build cache for the module: httpd.c is compiled once."""
    return str(tmp_path_factory.mktemp("cache"))


def start_httpd(nic, address, pages, cache):
    """`baremetal run examples/httpd.c --nic NIC -- ADDRESS PAGES`, once it serves."""
    env = dict(os.environ, BAREMETAL_CACHE=cache)
    process = subprocess.Popen([sys.executable, "-m", "pybaremetal", "run", "--no-pin",
                                os.path.join(ROOT, "examples", "httpd.c"), "--nic", nic, "--",
                                address, str(pages)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    banner = process.stdout.readline()
    if not banner.startswith("httpd: serving"):
        process.kill()
        pytest.fail(f"httpd did not start: {banner}{process.stderr.read()}")
    return process


def curl(namespace, url):
    return subprocess.run(["ip", "netns", "exec", namespace, "curl", "-s", "-m", "10",
                           "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20)


def check_served(process, answers, pages):
    out, err = process.communicate(timeout=10)
    for answer in answers:
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.endswith("\n200"), answer.stdout
        assert "Hello from a BareMetal machine" in answer.stdout
    assert f"httpd: {pages} pages served" in out, out + err


def test_httpd_answers_curl_over_veth_with_checksum_offload_on(cache):
    veth = VethNamespace(inner_ip="10.79.0.1")
    process = None
    try:
        process = start_httpd(f"packet:{veth.outer}", "10.79.0.2", 2, cache)
        ping = veth.run("ping", "-c", "1", "-W", "5", "10.79.0.2")      # ICMP echo too
        refused = veth.run("curl", "-s", "-m", "5", "http://10.79.0.2:8080/")
        answers = [curl(veth.name, "http://10.79.0.2/") for _ in range(2)]
        check_served(process, answers, 2)
        assert ping.returncode == 0, ping.stdout
        assert refused.returncode == 7                 # curl: couldn't connect (our RST)
    finally:
        if process is not None:
            process.kill()
        veth.close()


def test_httpd_answers_curl_over_tap(cache):
    namespace, name = unique("n"), unique("t")
    netns.create(namespace)
    process = None
    try:
        process = start_httpd(f"tap:{name}", "10.79.2.2", 1, cache)
        with IPRoute() as ipr:                          # the runtime's fd follows the device
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], net_ns_fd=namespace)
        disable_ipv6(name, namespace)
        with NetNS(namespace) as ns:
            index = ns.link_lookup(ifname=name)[0]
            ns.link("set", index=index, state="up")
            ns.addr("add", index=index, address="10.79.2.1", prefixlen=24)
        check_served(process, [curl(namespace, "http://10.79.2.2/")], 1)
    finally:
        if process is not None:
            process.kill()
        netns.remove(namespace)
