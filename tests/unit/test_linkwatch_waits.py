"""LinkWatch's pool waits over a scripted announcement feed (the sandbox tier drives the real socket):
the vnet switch is a DOWN then UP of the watched NIC, not any UP; attach skips known NICs."""

from __future__ import annotations

from guestagent.osutil.network import Link, LinkEvent, LinkWatch


class Scripted(LinkWatch):
    def __init__(self, events: list[LinkEvent]) -> None:  # no socket: the feed is the script
        self.script = list(events)
        self.read = 0

    def events(self, timeout: float) -> list[LinkEvent]:
        if not self.script:
            return []
        self.read += 1
        return [self.script.pop(0)]


def ev(name: str, state: str, kind: str = "RTM_NEWLINK", index: int = 3) -> LinkEvent:
    return LinkEvent(kind, Link(index=index, name=name, mac="", up=state == "UP", operstate=state,
                                loopback=name == "lo"))


def test_media_switch_needs_down_then_up_on_the_watched_nic():
    watch = Scripted([ev("eth0", "UP"), ev("fabric0", "DOWN"), ev("eth0", "LOWERLAYERDOWN"), ev("eth0", "UP"),
                      ev("eth0", "DOWN"), ev("eth0", "UP"), ev("eth0", "DOWN")])
    assert watch.wait_media_switch("eth0", 1.0) is True
    assert watch.read == 6 and len(watch.script) == 1  # returned at the UP after eth0's DOWN, not before


def test_no_media_switch_without_a_down():
    assert Scripted([ev("eth0", "UP"), ev("eth1", "DOWN"), ev("eth0", "UP")]).wait_media_switch("eth0", 0.2) is False


def test_detach_then_attach_of_an_unknown_nic():
    watch = Scripted([ev("eth0", "DOWN"), ev("eth0", "DOWN", "RTM_DELLINK"), ev("lo", "UP"), ev("eth0", "DOWN"),
                      ev("eth1", "DOWN")])
    assert watch.wait_detach(1.0) == "eth0"
    attached = watch.wait_attach(["eth0"], 1.0)
    assert attached is not None and attached.name == "eth1"
