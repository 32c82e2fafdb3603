"""System scenarios: the agent, installed from its .deb and started by systemd, in a booted Debian
guest behind the fabric. Each test boots a fresh overlay of the cached image; assertions are made on
the host, from the fabric's records, a real ssh login and the guest's files."""

from __future__ import annotations

import json

from vmtier.platform import default_scenario

from guestagent.lab import doctorfaults
from guestagent.osutil import gpa, kvp
from guestagent.provisioning import marker

PASSWORD = "VmTier-Passw0rd!"


def _shadow_hash(vm, user: str) -> str:
    line = next(ln for ln in vm.run(["getent", "shadow", user]).out.splitlines() if ln.startswith(user + ":"))
    return line.split(":")[1]


def _password_matches(vm, user: str, password: str) -> bool:
    check = ("import crypt, sys, warnings; warnings.simplefilter('ignore'); h = sys.argv[1]; "
             "sys.exit(0 if crypt.crypt(sys.stdin.read(), h) == h else 1)")
    return vm.run(["python3", "-c", check, _shadow_hash(vm, user)], input=password.encode(), check=False).rc == 0


def _assert_provisioned(vm, user: str, hostname: str) -> None:
    assert vm.exists("/var/lib/waagent/provisioned")
    assert vm.run(["id", "-un", user]).out.strip() == user
    assert _shadow_hash(vm, user).startswith("$6$"), "password hashed with SHA-512 crypt (Provisioning.PasswordCryptId=6)"
    assert _password_matches(vm, user, PASSWORD)
    assert vm.run(["hostname"]).out.strip() == hostname
    sudoers = vm.run(["cat", "/etc/sudoers.d/waagent"]).out
    assert user in sudoers, sudoers
    # a real ssh client, with the key the ovf-env gave the user, through a forwarded port
    login = vm.machine.wait_for(f"ssh login as {user}",
                                lambda: (r := vm.ssh(user, "id -un; hostname")).returncode == 0 and r, 120, 3)
    assert login.stdout.split() == [user, hostname], login.stdout + login.stderr


def _resource_disk(vm) -> str:
    return vm.run("findmnt -n -o FSTYPE --mountpoint /mnt/resource || true").out.strip()


def test_provision_ready_resource_disk_and_swap(azure_vm):
    vm = azure_vm(conf={"ResourceDisk.EnableSwap": "y", "ResourceDisk.SwapSizeMB": "64"}).start()
    took = vm.wait_ready()
    print(f"boot -> Ready seen by the fabric: {took:.1f}s (guest boot {vm.machine.boot_seconds:.1f}s)")
    _assert_provisioned(vm, "azureuser", "vmtier-vm")
    vm.machine.wait_for("the resource disk mounted on /mnt/resource", lambda: _resource_disk(vm) == "ext4", 120)
    swaps = vm.machine.wait_for("the swap file", lambda: vm.run("swapon --show=NAME,SIZE --noheadings").out, 120)
    assert "/mnt/resource/swapfile" in swaps, swaps
    log = vm.agent_log()
    assert PASSWORD not in log, "the password reached the agent log"


def _handler_status(blob: dict, name: str):
    for h in (blob or {}).get("aggregateStatus", {}).get("handlerAggregateStatus", []):
        if h.get("handlerName") == name:
            return h
    return None


def test_extension_enabled_and_status_uploaded(azure_vm):
    vm = azure_vm()
    vm.scenario_dict = default_scenario(vm, extensions=True)
    vm.start()
    vm.wait_ready()

    def succeeded():
        h = _handler_status(vm.fabric.status_blob, "GuestAgent.Fabric.Sample")
        status = (((h or {}).get("runtimeSettingsStatus") or {}).get("settingsStatus") or {}).get("status") or {}
        return h if h and h.get("status") == "Ready" and status.get("status") == "success" else None

    h = vm.machine.wait_for("the extension's success status in the uploaded status blob", succeeded, 420, 3)
    assert h["handlerVersion"] == "1.0.0"
    blob = json.dumps(vm.fabric.status_blob)
    assert "vmtier-protected-value" not in blob and "vmtier-protected-value" not in vm.agent_log()
    settings = vm.run("cat /var/lib/waagent/GuestAgent.Fabric.Sample-1.0.0/config/0.settings").out
    assert "protectedSettings" in settings
    assert vm.run("stat -c %a /var/lib/waagent/GuestAgent.Fabric.Sample-1.0.0/config/0.settings").out.strip() \
        in ("600", "400")


def test_reboot_does_not_provision_again_and_remounts_resource_disk(azure_vm):
    vm = azure_vm().start()
    vm.wait_ready()
    vm.wait_provisioned()
    vm.machine.wait_for("the resource disk", lambda: _resource_disk(vm) == "ext4", 120)
    keys_before = vm.run("cat /etc/ssh/ssh_host_*_key.pub").out
    shadow_before = _shadow_hash(vm, "azureuser")
    ready_before = len(vm.ready_reports())
    vm.run("echo kept > /mnt/resource/vmtier-mark && sync")

    vm.machine.reboot()
    vm.machine.wait_for("the agent daemon after the reboot",
                        lambda: vm.run(["pgrep", "-f", "waagent -daemon"], check=False).rc == 0, 120)
    vm.machine.wait_for("the resource disk mounted again", lambda: _resource_disk(vm) == "ext4", 240)
    vm.machine.wait_for("the agent's child after the reboot", lambda: vm.process_pids("run-exthandlers"), 240)
    # not provisioned again: the host keys were not regenerated, the user's password not reset
    assert vm.run("cat /etc/ssh/ssh_host_*_key.pub").out == keys_before
    assert _shadow_hash(vm, "azureuser") == shadow_before
    assert len(vm.ready_reports()) >= ready_before
    _assert_provisioned(vm, "azureuser", "vmtier-vm")


def test_deprovision_then_new_ovf_env_provisions_fresh(azure_vm):
    vm = azure_vm().start()
    vm.wait_ready()
    vm.wait_provisioned()
    res = vm.run(["waagent", "-deprovision+user", "-force"], timeout=300)
    assert not vm.exists("/var/lib/waagent/provisioned"), res
    assert vm.run(["id", "azureuser"], check=False).rc != 0, "deprovision+user deletes the provisioned user"
    vm.machine.poweroff()

    second = default_scenario(vm, hostname="vmtier-second", user="seconduser")
    vm.boot_again(second, new_vm_id=True)
    vm.wait_ready()
    vm.wait_provisioned()
    _assert_provisioned(vm, "seconduser", "vmtier-second")
    assert vm.run(["id", "azureuser"], check=False).rc != 0


def _main_pid(vm) -> int:
    return int(vm.run(["systemctl", "show", "-p", "MainPID", "--value", "walinuxagent.service"]).out.strip() or 0)


def test_systemd_restarts_daemon_and_daemon_restarts_child_after_kill9(azure_vm):
    vm = azure_vm().start()
    vm.wait_ready()
    child = vm.machine.wait_for("the ext-handler child", lambda: vm.process_pids("run-exthandlers"), 240)[0]
    daemon = _main_pid(vm)
    assert daemon > 0

    vm.run(["kill", "-9", str(child)])
    new_child = vm.machine.wait_for(
        "a new ext-handler child", lambda: [p for p in vm.process_pids("run-exthandlers") if p != child], 180)[0]
    assert _main_pid(vm) == daemon, "the daemon itself survived and restarted its child"

    vm.run(["kill", "-9", str(daemon)])
    new_daemon = vm.machine.wait_for("systemd restarting the daemon",
                                     lambda: (p := _main_pid(vm)) not in (0, daemon) and p, 120)
    assert vm.run(["systemctl", "is-active", "walinuxagent.service"]).out.strip() == "active"
    vm.machine.wait_for("the restarted daemon's child",
                        lambda: [p for p in vm.process_pids("run-exthandlers") if p not in (child, new_child)], 240)
    restarts = vm.run(["systemctl", "show", "-p", "NRestarts", "--value", "walinuxagent.service"]).out.strip()
    assert restarts == "1", restarts
    print(f"daemon {daemon} -> {new_daemon}; child {child} -> {new_child}")


def test_doctor_healthy_then_gpa_fault_and_kvp_report(azure_vm):
    """One boot: the provisioning report in the KVP pool, `guestagent doctor` clean on the healthy VM
    (exit 0), then naming an injected fault (the GPA's listener stopped in its status.json, exit 1)."""
    vm = azure_vm(kvp=True).start()
    vm.wait_ready()
    vm.wait_provisioned()
    pool = vm.machine.read(kvp.POOL_FILE)
    reports = [v for k, v in kvp.decode_records(pool) if k == kvp.REPORT_KEY]
    assert len(reports) == 1, (len(pool), reports)
    fields = dict(f.split("=", 1) for f in reports[0].split("|"))
    assert fields["result"] == "success" and fields["agent"].startswith("WALinuxAgent/"), fields
    # the VM id as the platform knows it: SMBIOS's UUID with its first three groups byte-swapped
    assert fields["vm_id"].lower() == marker.correct_instance_id(vm.machine.cfg.vm_uuid).lower(), fields
    # the doctor's status check needs the ext-handler's first status upload
    vm.machine.wait_for("the first status upload", lambda: vm.fabric.status_blob, 240, 3)

    healthy = vm.run(["guestagent", "doctor"], check=False, timeout=240)
    print(healthy.out)
    assert healthy.rc == 0, healthy.out + healthy.err
    assert "no problems found" in healthy.out

    vm.run(["mkdir", "-p", gpa.LOG_DIR])
    vm.machine.write(gpa.STATUS_FILE, doctorfaults.shape("gpa-listener").text.encode())
    faulty = vm.run(["guestagent", "doctor"], check=False, timeout=240)
    print(faulty.out)
    assert faulty.rc == 1, faulty.out + faulty.err
    line = next((ln for ln in faulty.out.splitlines() if "gpa.proxyListenerStatus" in ln), "")
    assert line.startswith("[FAIL]") and doctorfaults.LISTENER_FAILURE in line, faulty.out
