"""Which address a worker advertises (common/net_address.py) and the UCX transport it implies."""

from __future__ import annotations

import argparse

import torch

from common.net_address import advertise_host, interface_of, is_loopback, route_source_ip
from kv_transfer.nixl_connector import NixlSettings


def test_a_specific_bind_address_is_the_advertised_one():
    assert advertise_host("10.1.2.3", ["redis.example"]) == "10.1.2.3"
    assert advertise_host("127.0.0.1", []) == "127.0.0.1"


def test_all_interfaces_with_local_peers_stays_on_loopback():
    assert advertise_host("0.0.0.0", ["127.0.0.1"]) == "127.0.0.1"
    assert advertise_host("0.0.0.0", ["localhost"]) == "127.0.0.1"


def test_all_interfaces_with_a_remote_peer_takes_the_routing_interface():
    # 192.0.2.1 (TEST-NET-1) is unroutable in practice, but the kernel still picks a source
    # address for it when a default route exists; without one, the hostname is the fallback.
    ip = route_source_ip("192.0.2.1")
    chosen = advertise_host("0.0.0.0", ["192.0.2.1"])
    assert chosen == (ip if ip and not is_loopback(ip) else __import__("socket").gethostname())
    assert not is_loopback(chosen)


def test_interface_of_finds_loopback_and_nothing_for_foreign_addresses():
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("192.0.2.77") is None


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1")


def test_ucx_transport_follows_the_advertised_address():
    cpu = torch.device("cpu")
    local = NixlSettings.for_device(cpu, "127.0.0.1")
    assert (local.ucx_tls, local.ucx_net_devices) == ("shm,self", "lo")
    assert NixlSettings.for_device(cpu, None) == local
    remote = NixlSettings.for_device(cpu, "192.0.2.77", pull_timeout_s=3.0)
    assert remote.ucx_tls == "tcp,self" and remote.ucx_net_devices is None  # no such interface
    assert remote.pull_timeout_s == 3.0
    gpu = NixlSettings.for_device(torch.device("cuda", 0), "10.0.0.1")
    assert gpu.ucx_tls is None and gpu.ucx_net_devices is None  # UCX chooses


def test_worker_cli_resolves_the_advertised_address_at_the_edge():
    from worker.cli_args import add_worker_arguments, worker_config_from_args

    parser = argparse.ArgumentParser()
    add_worker_arguments(parser, "prefill")
    local = worker_config_from_args(parser.parse_args(["--host", "0.0.0.0"]), "prefill")
    assert local.advertise_host == local.engine.kv_transfer_host == "127.0.0.1"
    given = worker_config_from_args(parser.parse_args(
        ["--host", "0.0.0.0", "--advertise-host", "10.9.8.7"]), "prefill")
    assert given.advertise_host == given.engine.kv_transfer_host == "10.9.8.7"
    bound = worker_config_from_args(parser.parse_args(["--host", "10.9.8.6"]), "decode")
    assert bound.engine.kv_transfer_host == "10.9.8.6"
