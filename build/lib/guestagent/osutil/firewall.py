"""The WireServer firewall rules as data, and the three tools that apply them (spec 05 §11).

Only root (the agent) may open TCP connections to the WireServer, except DNS (TCP 53), which Azure
serves on the same address. As upstream 2.15: ``iptables`` when it exists (security table, OUTPUT
chain, three rules), else ``nft`` (one table ``walinuxagent`` with one rule); ``firewall-cmd`` holds
the permanent copy of the iptables rules when firewalld runs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from guestagent import log
from guestagent.errors import CommandError
from guestagent.osutil import system

ACCEPT_DNS, ACCEPT, DROP = "ACCEPT DNS", "ACCEPT", "DROP"
IPTABLES_WAIT_SINCE = (1, 4, 21)
NFT_TABLE = "walinuxagent"


class FirewallManagerNotAvailableError(Exception):
    """The tool a manager needs is not installed."""


class FirewallStateError(Exception):
    """The rules are only partly there, or not as the agent sets them."""


def iptables_rules(address: str, uid: int) -> list[tuple[str, list[str]]]:
    """(name, rule after ``<op> OUTPUT``) in chain order: DNS accept, agent accept, drop."""
    base = ["-d", address, "-p", "tcp"]
    return [
        (ACCEPT_DNS, [*base, "--destination-port", "53", "-j", "ACCEPT"]),
        (ACCEPT, [*base, "-m", "owner", "--uid-owner", str(uid), "-j", "ACCEPT"]),
        (DROP, [*base, "-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"]),
    ]


def nft_script(address: str, uid: int) -> str:
    return (f"add table ip {NFT_TABLE}\n"
            f"add chain ip {NFT_TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}\n"
            f"add rule ip {NFT_TABLE} output ip daddr {address} tcp dport != 53 skuid != {uid} "
            "ct state invalid,new counter drop\n")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


class FirewallManager:
    """Common interface: ``check() -> bool`` (raises FirewallStateError when partial), ``setup()``,
    ``remove()``, ``remove_legacy_rule()``, ``get_state() -> str``."""

    tool = ""

    def __init__(self, address: str, uid: Optional[int] = None):
        self.address = address
        self.uid = os.getuid() if uid is None else uid
        if system.which(self.tool) is None:
            raise FirewallManagerNotAvailableError(f"{self.tool} is not available")
        self.version = "unknown"

    def _run(self, argv: list[str], **kw) -> str:
        return system.run(argv, timeout=60, **kw).stdout

    def get_state(self) -> str:
        try:
            return self._run(self.state_command())
        except CommandError as e:
            log.warn("Listing firewall rules failed: {0}", e)
            return f"Failed to get the current state of the firewall rules: {e}"

    def state_command(self) -> list[str]:
        raise NotImplementedError

    def remove_legacy_rule(self) -> None:
        """Only the rule-per-command tools have a legacy rule to remove."""


class _MultipleRules(FirewallManager):
    append_option = check_option = delete_option = ""

    def commands(self, option: str) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    def legacy_command(self, option: str) -> list[str]:
        raise NotImplementedError

    def setup(self) -> None:
        for _, argv in self.commands(self.append_option):
            self._run(argv)

    def _present(self, argv: list[str]) -> tuple[bool, str]:
        try:
            self._run(argv)
            return True, ""
        except CommandError as e:
            if e.returncode == 1:
                return False, e.stderr.strip()
            raise

    def check(self) -> bool:
        missing, existing, reasons = [], [], []
        for name, argv in self.commands(self.check_option):
            present, reason = self._present(argv)
            (existing if present else missing).append(name)
            if not present:
                reasons.append(reason)
        if not missing:
            return True
        if existing:
            raise FirewallStateError(f"The following rules are missing: {missing} due to: {reasons}")
        return False

    def remove(self) -> None:
        existing = [name for name, argv in self.commands(self.check_option) if self._present(argv)[0]]
        for name, argv in self.commands(self.delete_option):
            if name in existing:
                self.delete(argv)

    def delete(self, argv: list[str]) -> None:
        self._run(argv)

    def remove_legacy_rule(self) -> None:
        check = self.legacy_command(self.check_option)
        if not self._present(check)[0]:
            log.info("Did not find a legacy firewall rule: {0}", check)
            return
        log.info("Found legacy firewall rule: {0}", check)
        self.delete(self.legacy_command(self.delete_option))


class IpTables(_MultipleRules):
    tool = "iptables"
    append_option, check_option, delete_option = "-A", "-C", "-D"

    def __init__(self, address: str, uid: Optional[int] = None):
        super().__init__(address, uid)
        wait = False
        try:
            out = self._run(["iptables", "--version"])
            m = re.match(r"^[^\d.]*([\d.]+)", out)
            if m is None:
                raise ValueError(f'output of "--version": {out}')
            self.version = m.group(1)
            wait = _version_tuple(self.version) >= IPTABLES_WAIT_SINCE
        except (CommandError, ValueError) as e:
            log.warn("Unable to determine version of iptables; will not use -w option. --version output: {0}", e)
        self.base = ["iptables", *(["-w"] if wait else []), "-t", "security"]

    def commands(self, option: str) -> list[tuple[str, list[str]]]:
        return [(name, [*self.base, option, "OUTPUT", *rule]) for name, rule in iptables_rules(self.address, self.uid)]

    def legacy_command(self, option: str) -> list[str]:
        # Agents <= 2.2.25 accepted new connections instead of dropping them.
        return [*self.base, option, "OUTPUT", "-d", self.address, "-p", "tcp", "-m", "conntrack", "--ctstate",
                "INVALID,NEW", "-j", "ACCEPT"]

    def delete(self, argv: list[str]) -> None:
        """Delete until the rule is gone (exit 1); at most 99 times, as upstream."""
        for _ in range(1, 100):
            try:
                self._run(argv)
            except CommandError as e:
                if e.returncode == 1:
                    return
                if e.returncode == 2:
                    raise FirewallStateError(f"Invalid firewall deletion command '{argv}'")

    def state_command(self) -> list[str]:
        return [*self.base, "-t", "security", "-L", "-nxv"]


class FirewallCmd(_MultipleRules):
    """firewalld's permanent direct rules: the same three rules, kept by firewalld across reboots."""

    tool = "firewall-cmd"
    append_option, check_option, delete_option = "--passthrough", "--query-passthrough", "--remove-passthrough"

    def __init__(self, address: str, uid: Optional[int] = None):
        super().__init__(address, uid)
        try:
            self.version = self._run(["firewall-cmd", "--version"]).strip()
        except CommandError:
            pass

    def commands(self, option: str) -> list[tuple[str, list[str]]]:
        return [(name, ["firewall-cmd", "--permanent", "--direct", option, "ipv4", "-t", "security", "-A", "OUTPUT",
                        *rule]) for name, rule in iptables_rules(self.address, self.uid)]

    def legacy_command(self, option: str) -> list[str]:
        # Agents <= 2.7.0.6 inserted the DNS rule (-I) instead of appending it.
        return ["firewall-cmd", "--permanent", "--direct", option, "ipv4", "-t", "security", "-I", "OUTPUT",
                "-d", self.address, "-p", "tcp", "--destination-port", "53", "-j", "ACCEPT"]

    def state_command(self) -> list[str]:
        return ["firewall-cmd", "--permanent", "--direct", "--get-all-passthroughs"]

    @staticmethod
    def running() -> bool:
        """``firewall-cmd --state`` prints ``running``."""
        if system.which("firewall-cmd") is None:
            log.info("The firewalld service is not present on the system")
            return False
        res = system.run(["firewall-cmd", "--state"], check=False, timeout=60)
        state = (res.stdout or res.stderr).strip()
        log.info("The firewalld service is {0}", "running" if state == "running" else f"present, but not running: "
                                                                                      f"{state}")
        return state == "running"


class NfTables(FirewallManager):
    tool = "nft"

    def __init__(self, address: str, uid: Optional[int] = None):
        super().__init__(address, uid)
        try:
            self.version = self._run(["nft", "--version"]).strip()
        except CommandError:
            pass

    def setup(self) -> None:
        self._run(["nft", "-f", "-"], input=nft_script(self.address, self.uid))

    def remove(self) -> None:
        self._run(["nft", "delete", "table", NFT_TABLE])

    def state_command(self) -> list[str]:
        return ["nft", "list", "table", NFT_TABLE]

    def check(self) -> bool:
        text = self._run(["nft", "--json", "list", "tables"])
        try:
            items = json.loads(text)["nftables"]
            tables = [i["table"] for i in items if i.get("table") is not None]
        except (ValueError, KeyError, TypeError) as e:
            raise FirewallStateError(f"Can't parse the output of 'nft list tables'\n{text}\nERROR: {e}")
        if all(t.get("name") != NFT_TABLE for t in tables):
            return False
        text = self._run(["nft", "--json", "list", "table", NFT_TABLE])
        try:
            rules = [i["rule"] for i in json.loads(text)["nftables"] if i.get("rule") is not None]
        except (ValueError, KeyError, TypeError) as e:
            raise FirewallStateError(f"Can't parse the output of 'nft list table {NFT_TABLE}'\n{text}\nERROR: {e}")
        if len(rules) != 1:
            raise FirewallStateError("There should be exactly one rule in the 'output' chain")
        rule = rules[0]
        if not (rule.get("table") == NFT_TABLE and rule.get("family") == "ip" and rule.get("chain") == "output"):
            raise FirewallStateError("Cannot find any rules for the 'output' chain")
        expr = rule.get("expr", [])
        wanted = [
            ({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": self.address}},
             "No expression matches the WireServer address"),
            ({"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 53}},
             "No expression excludes the DNS port"),
            ({"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": self.uid}},
             "No expression excludes the Agent's UID"),
            ({"drop": None}, "The drop action is missing"),
        ]
        errors = [message for item, message in wanted if item not in expr]
        if errors:
            raise FirewallStateError(f"{errors}")
        return True


def create(address: str, uid: Optional[int] = None) -> FirewallManager:
    """iptables first, then nft (upstream's precedence); neither → FirewallManagerNotAvailableError."""
    for cls in (IpTables, NfTables):
        try:
            return cls(address, uid)
        except FirewallManagerNotAvailableError:
            continue
    raise FirewallManagerNotAvailableError("Cannot create a firewall manager; no known command-line tools are "
                                           "available")
