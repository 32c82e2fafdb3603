"""The waagent command line: upstream's parsing (05 §16), -version, common start-up (06 §2), dispatch."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestagent import cli, conf
from guestagent.cli import CliArgs, UsageError, parse_args

REPO = Path(__file__).resolve().parents[2]
WAAGENT = REPO / "bin" / "waagent"
ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.mark.parametrize("argv,command", [
    ([], "help"),
    (["-daemon"], "daemon"),
    (["--daemon"], "daemon"),
    (["/daemon"], "daemon"),
    (["-/-daemon"], "daemon"),
    (["daemon"], "daemon"),
    (["-daemonX"], "daemon"),  # anchored at the start only
    (["-deprovision+user"], "deprovision+user"),
    (["-deprovision"], "deprovision"),
    (["-deprovision+userfoo"], "deprovision+user"),
    (["-start"], "start"),
    (["-startup"], "start"),
    (["-register-service"], "register-service"),
    (["-run-exthandlers"], "run-exthandlers"),
    (["-version"], "version"),
    (["-show-configuration"], "show-configuration"),
    (["-help"], "help"),
    (["-usage"], "help"),
    (["-?"], "help"),
    (["/?"], "help"),
    (["-collect-logs"], "collect-logs"),
    (["-provision"], "provision"),  # our extension: 2.15's parser shows the usage
    (["-daemon", "-version"], "version"),  # the last command wins
    (["-version", "-daemon"], "daemon"),
    (["", "-daemon", ""], "daemon"),  # empty arguments are skipped
    (["-verbose", "-force", "-debug", "-full"], "help"),  # flags alone select no command
])
def test_commands(argv, command):
    args = parse_args(argv)
    assert args.command == command
    assert args.unknown is None


@pytest.mark.parametrize("argv,unknown", [
    (["-foo"], "-foo"),
    (["-foo", "-daemon"], "-foo"),  # an unknown argument stops parsing
    (["-daemon", "-foo"], "-foo"),
    (["-d"], "-d"),
    (["-serialconsole"], "-serialconsole"),  # documented, not implemented by 2.x
    (["-setup-firewall=1.2.3"], "-setup-firewall=1.2.3"),  # fewer than 7 characters of address
    (["-setup-firewall=abc.def.ghi"], "-setup-firewall=abc.def.ghi"),
    (["-configuration-path:"], "-configuration-path:"),
    (["- daemon"], "- daemon"),
])
def test_unknown_arguments(argv, unknown):
    args = parse_args(argv)
    assert args.command == "help" and args.unknown == unknown


def test_flags_combine_with_commands():
    args = parse_args(["-verbose", "-deprovision+user", "--force"])
    assert args == CliArgs(command="deprovision+user", verbose=True, force=True)
    args = parse_args(["-run-exthandlers", "-debug"])
    assert args.command == "run-exthandlers" and args.debug and not args.verbose
    args = parse_args(["-collect-logs", "-full"])
    assert args.command == "collect-logs" and args.full
    assert parse_args(["-verbosely"]).verbose  # prefix match for flags too
    assert parse_args(["-versionx"]).command == "version"


def test_setup_firewall():
    args = parse_args(["-setup-firewall=168.63.129.16"])
    assert args.command == "setup-firewall" and args.firewall_dst_ip == "168.63.129.16"
    assert parse_args(["--setup-firewall=10.0.0.1"]).firewall_dst_ip == "10.0.0.1"
    # the pre-2.12 network-setup unit's form
    args = parse_args(["-setup-firewall", "-dst_ip=168.63.129.16", "-uid=0", "-w"])
    assert (args.command, args.firewall_dst_ip, args.firewall_uid, args.firewall_wait) == \
        ("setup-firewall", "168.63.129.16", 0, True)


def test_configuration_path(tmp_root):
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc" / "my-agent_1.conf").write_text("Lib.Dir=/x\n")
    assert parse_args(["-configuration-path:/etc/my-agent_1.conf", "-daemon"]).conf_path == "/etc/my-agent_1.conf"
    with pytest.raises(UsageError, match=r"Error: Configuration file /etc/nope.conf does not exist"):
        parse_args(["-configuration-path:/etc/nope.conf", "-daemon"])
    # only letters, digits, _ / . - belong to the path: the rest is ignored
    args = parse_args(["-configuration-path:/etc/my-agent_1.conf;rm -rf /", "-daemon"])
    assert args.conf_path == "/etc/my-agent_1.conf"


def test_main_usage_and_exit_codes(tmp_root, capsys):
    assert cli.main(["-help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\nusage: ") and out.endswith("-collect-logs [-full]|-setup-firewall=<IP>]\n\n")
    assert cli.main([]) == 0
    assert cli.main(["-bogus"]) == 2
    captured = capsys.readouterr()
    assert "usage:" in captured.out and captured.err == ""
    assert cli.main(["-configuration-path:/none.conf", "-daemon"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "Error: Configuration file /none.conf does not exist\n" and "usage:" in captured.out
    assert cli.main(["-setup-firewall"]) == 2  # the legacy form without -dst_ip


def _os_release(root: Path, text: str) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "os-release").write_text(text)


def test_version_output(tmp_root, capsys):
    _os_release(tmp_root, 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\n')
    assert cli.main(["-version"]) == 0
    py = sys.version_info
    assert capsys.readouterr().out.splitlines() == [
        "WALinuxAgent-2.15.0.1 running on ubuntu 22.04",
        f"Python: {py[0]}.{py[1]}.{py[2]}",
        "Goal state agent: 2.15.0.1",
        "guestagent 0.1.0",
    ]


def test_version_distro_and_goal_state_agent(tmp_root):
    _os_release(tmp_root, 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.4"\n')
    assert cli.distro_name_version() == ("rhel", "9.4")
    _os_release(tmp_root, "ID=ol\nVERSION_ID=8.10\n")
    assert cli.distro_name_version() == ("oracle", "8.10")
    (tmp_root / "etc" / "os-release").unlink()
    assert cli.distro_name_version() == ("unknown", "")
    # a downloaded agent running the ext-handler is the goal state agent (found in /proc/<pid>/cmdline)
    for pid, cmdline in (("1", b"/sbin/init\0"), ("77", b"python3\0-u\0/var/lib/waagent/WALinuxAgent-2.15.1.3/bin/"
                                                      b"WALinuxAgent-2.15.1.3-py3.12.egg\0-run-exthandlers\0")):
        (tmp_root / "proc" / pid).mkdir(parents=True)
        (tmp_root / "proc" / pid / "cmdline").write_bytes(cmdline)
    (tmp_root / "proc" / "self").mkdir()
    assert cli.goal_state_agent_version() == "2.15.1.3"


def test_version_is_fast_and_light():
    code = ("import sys; from guestagent.cli import main; main(['-version']); "
            "print(sorted(m for m in ('dataclasses', 'inspect', 'lxml', 'cryptography', 'subprocess', 'asn1crypto', "
            "'pyroute2', 'psutil', 'guestagent.conf', 'guestagent.log', 'guestagent.osutil.system') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(WAAGENT), "-version"], env=ENV, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        base = time.perf_counter()
    base_times = []
    for _ in range(5):
        base = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=ENV, check=True)
        base_times.append(time.perf_counter() - base)
    wall, bare = statistics.median(times), statistics.median(base_times)
    print(f"waagent -version: {wall * 1000:.1f} ms wall (python3 -c pass: {bare * 1000:.1f} ms)")
    assert wall < 0.5


def _conf(root: Path, text: str = "# nothing set\n") -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "waagent.conf").write_text(text)
    (root / "dev").mkdir(exist_ok=True)
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)


def test_show_configuration_command(tmp_root, capsys):
    _conf(tmp_root, "Lib.Dir=/srv/lib\nLogs.Verbose=maybe\n")
    assert cli.main(["-show-configuration"]) == 0
    out = capsys.readouterr().out
    expected = conf.show_configuration(conf.parse("Lib.Dir=/srv/lib\nLogs.Verbose=maybe\n"))
    assert out.endswith(expected)
    warning = "/etc/waagent.conf, line 2: invalid value 'maybe' for Logs.Verbose"
    assert " WARNING " in out and warning in out
    # the deferred diagnostics reached the log file and the console too
    assert warning in (tmp_root / "var" / "log" / "waagent.log").read_text()
    assert warning in (tmp_root / "dev" / "console").read_text()
    assert (tmp_root / "var" / "log" / "azure").is_dir()
    assert (tmp_root / "var" / "log" / "azure").stat().st_mode & 0o777 == 0o755


def test_setup_command_appenders(tmp_root, capsys):
    from guestagent import log

    _conf(tmp_root, "Logs.Verbose=y\nExtension.LogDir=/var/log/ext\n")
    (tmp_root / "var" / "lib" / "waagent").mkdir(parents=True)
    (tmp_root / "var" / "lib" / "waagent" / "provisioned").write_text("")
    config = cli.setup_command(CliArgs(command="daemon"))
    assert config.extension_log_dir == "/var/log/ext" and (tmp_root / "var" / "log" / "ext").is_dir()
    log.verbose("a verbose line")
    log.info("an info line")
    out = capsys.readouterr().out
    assert "an info line" in out and "a verbose line" not in out  # stdout: VERBOSE only with -verbose
    text = (tmp_root / "var" / "log" / "waagent.log").read_text()
    assert "a verbose line" in text and "an info line" in text  # file: Logs.Verbose=y
    assert not (tmp_root / "dev" / "console").exists()  # provisioned: no console
    log.reset()

    _conf(tmp_root, "Logs.Console=n\n")
    (tmp_root / "var" / "lib" / "waagent" / "provisioned").unlink()
    cli.setup_command(CliArgs(command="daemon", verbose=True))
    log.verbose("verbose to stdout")
    assert "verbose to stdout" in capsys.readouterr().out
    assert not (tmp_root / "dev" / "console").exists()  # Logs.Console=n


def test_extension_log_dir_that_is_a_file(tmp_root, capsys):
    _conf(tmp_root, "Extension.LogDir=/var/log/azure\n")
    (tmp_root / "var" / "log" / "azure").write_text("not a dir")
    cli.setup_command(CliArgs(command="daemon"))
    assert "ERROR" in capsys.readouterr().out
    assert "Exception occurred while creating extension log directory /var/log/azure: /var/log/azure is a file" in \
        (tmp_root / "var" / "log" / "waagent.log").read_text()


COMMAND_MODULE = '''
def ok(args, config):
    print("ran", args.command, args.force, config.lib_dir)
    return 3

def boom(args, config):
    raise RuntimeError("kaput")

def leave(args, config):
    raise SystemExit(4)
'''


@pytest.fixture
def commands(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "h1_cli_commands.py").write_text(COMMAND_MODULE)
    (mods / "h1_cli_broken.py").write_text("import h1_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(mods))
    return lambda command, target: monkeypatch.setitem(cli.COMMANDS, command, target)


def test_dispatch(tmp_root, capsys, commands):
    _conf(tmp_root, "Lib.Dir=/srv/l\n")
    commands("deprovision+user", "h1_cli_commands:ok")
    assert cli.main(["-deprovision+user", "-force"]) == 3
    assert "ran deprovision+user True /srv/l" in capsys.readouterr().out
    commands("daemon", "h1_cli_commands:leave")
    assert cli.main(["-daemon"]) == 4


def test_not_implemented_yet(tmp_root, capsys, commands):
    _conf(tmp_root)
    commands("register-service", "guestagent.h1_no_such_module:run")
    assert cli.main(["-register-service"]) == 1
    assert capsys.readouterr().out.endswith("register-service is not implemented yet\n")
    commands("collect-logs", "h1_cli_commands:no_such_function")
    assert cli.main(["-collect-logs"]) == 1
    assert "collect-logs is not implemented yet" in capsys.readouterr().out


def test_failures_are_logged(tmp_root, capsys, commands):
    _conf(tmp_root)
    commands("run-exthandlers", "h1_cli_commands:boom")
    assert cli.main(["-run-exthandlers"]) == 1
    out = capsys.readouterr().out
    assert " ERROR " in out and "Failed to run 'run-exthandlers': kaput\nTraceback" in out
    assert "Failed to run 'run-exthandlers': kaput" in (tmp_root / "var" / "log" / "waagent.log").read_text()
    # a module that exists but cannot import is a failure, not "not implemented"
    commands("provision", "h1_cli_broken:run")
    assert cli.main(["-provision"]) == 1
    assert "Failed to run 'provision': No module named 'h1_no_such_dependency'" in capsys.readouterr().out


def test_no_configuration_file_is_one_line_without_traceback(tmp_root, capsys):
    for command in ("show-configuration", "daemon"):
        assert cli.main([f"-{command}"]) == 1
        out, err = capsys.readouterr()
        assert err == (f"waagent -{command}: Missing configuration in /etc/waagent.conf "
                       "(-configuration-path:<file> names another file)\n")
        assert "Traceback" not in out + err


def test_command_table():
    for command, target in cli.COMMANDS.items():
        module, _, func = target.partition(":")
        assert module.startswith("guestagent.") and func.isidentifier(), command
        assert parse_args([f"-{command}=168.63.129.16" if command == "setup-firewall" else f"-{command}"]).command \
            == command
    assert cli.resolve("show-configuration") is cli.run_show_configuration


def test_start_spawns_the_daemon_detached(tmp_root, monkeypatch):
    out = tmp_root / "spawned.txt"
    script = ("import os, sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]) + ' sid_is_pid=' + "
              "str(os.getsid(0) == os.getpid()))")
    monkeypatch.setattr(cli, "self_command", lambda: [sys.executable, "-c", script, str(out)])
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc" / "a.conf").write_text("")
    assert cli.main(["-start", "-configuration-path:/etc/a.conf"]) == 0
    deadline = time.monotonic() + 10
    while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert out.read_text() == "-daemon -configuration-path:/etc/a.conf sid_is_pid=True"


def test_self_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(WAAGENT)])
    assert cli.self_command() == [str(WAAGENT)]
    monkeypatch.setattr(sys, "argv", [str(REPO / "guestagent" / "cli.py")])
    assert cli.self_command() == [sys.executable, "-m", "guestagent.cli"]


def test_bin_waagent_runs(tmp_path):
    out = subprocess.run([str(WAAGENT), "-version"], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("WALinuxAgent-2.15.0.1 running on ")
    out = subprocess.run([sys.executable, "-m", "guestagent.cli", "-nonsense"], env=ENV, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 2 and "usage:" in out.stdout


@pytest.mark.parametrize("distro, calls", [
    ("rhel:9.4", ["enable waagent", "stop waagent", "start waagent"]),
    ("ubuntu:22.04", ["unmask walinuxagent", "stop walinuxagent", "start walinuxagent"]),
    ("debian:12", ["stop walinuxagent", "start walinuxagent"]),
])
def test_register_service_runs_the_distributions_systemctl_commands(tmp_root, tmp_path, capsys, monkeypatch,
                                                                    distro, calls):
    """As upstream's OS-utils: enable (RHEL) / unmask (Ubuntu) / nothing (Debian), then stop and start."""
    _conf(tmp_root)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "systemctl.log"
    (bindir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {record}\n[ "$1" != stop ]\n')  # stop fails
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("GUESTAGENT_DISTRO", distro)
    assert cli.main(["-register-service"]) == 0
    assert record.read_text().splitlines() == calls
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.endswith(" service")] == [
        "Register WALinuxAgent service", "Stop WALinuxAgent service", "Start WALinuxAgent service"]
