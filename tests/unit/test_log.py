"""The agent log: no secret reaches any appender, and lines keep upstream's format (spec 06 §8.1)."""

from __future__ import annotations

import io
import re
import threading

import pytest

from guestagent import log

LINE = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z) (?P<level>VERBOSE|INFO|WARNING|ERROR) "
                  r"(?P<thread>\S+) (?P<rest>.*)$", re.DOTALL)

PASSWORD = "Tr0ub4dor&3-horse"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAPEMSECRETLINE1\nPEMSECRETLINE2/+==\n"
       "-----END RSA PRIVATE KEY-----")
SECRETS = {
    "registered password": (f"useradd done; password for azureuser is {PASSWORD}", [PASSWORD]),
    "registered password in args": ("chpasswd input: {0}", [PASSWORD]),
    "ovf-env UserPassword": ("<ns1:UserName>azureuser</ns1:UserName><ns1:UserPassword>OvfS3cret!pw</ns1:UserPassword>"
                             "<ns1:DisableSshPasswordAuthentication>false", ["OvfS3cret!pw"]),
    "plain UserPassword": ("<UserPassword>\n  multi\n  line SECRETPW\n</UserPassword>", ["SECRETPW", "multi"]),
    "protectedSettings string": ('{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":"ABC",'
                                 '"protectedSettings":"MIIBsQYJKoZIhvcNAQcDoIIBojCCAZ4CAQAxggFp=="}}]}',
                                 ["MIIBsQYJKoZIhvcNAQcDoIIBojCCAZ4CAQAxggFp"]),
    "protectedSettings object": ('{"protectedSettings": {"commandToExecute": "echo TOPSECRET", '
                                 '"nested": {"storageAccountKey": "KEYSECRET=="}, "after": "AFTERSECRET"},'
                                 ' "publicSettings": {"fileUris": []}}', ["TOPSECRET", "KEYSECRET", "AFTERSECRET"]),
    "PEM private key": (f"Loaded key:\n{PEM}\nnext line", ["PEMSECRETLINE1", "PEMSECRETLINE2"]),
    "PEM key truncated": ("-----BEGIN PRIVATE KEY-----\nMIIEvQTRUNCATEDSECRET", ["TRUNCATEDSECRET"]),
    "SAS URL": ("Downloading https://md-hdd.blob.core.windows.net/c/abcd?sv=2018-03-28&sr=b&si=x&"
                "sig=SASSIGSECRET%2Bz%3D&se=2030-01-01 done", ["SASSIGSECRET", "sv=2018"]),
    "SAS URL sig not first": ("PUT https://st.blob.core.windows.net/s/b.status?sr=b&sp=rw&sig=SIG2SECRET",
                              ["SIG2SECRET"]),
    "SAS URL in XML": ("<StatusUploadBlob>https://st.blob.core.windows.net/$system/a.status?sv=2018&amp;"
                       "sr=b&amp;sig=XMLSIGSECRET</StatusUploadBlob>", ["XMLSIGSECRET"]),
}


@pytest.fixture
def appenders(tmp_path, monkeypatch, capsys):
    """All three appenders of a command: stdout, the log file and the console (a temp file here)."""
    console = tmp_path / "console"
    logfile = tmp_path / "waagent.log"
    monkeypatch.setattr(log, "CONSOLE", str(console))
    log.setup(verbose_stdout=True, log_file=str(logfile), console=True)

    def outputs() -> dict[str, str]:
        return {"stdout": capsys.readouterr().out, "file": logfile.read_text(encoding="ascii"),
                "console": console.read_text(encoding="ascii")}

    return outputs


@pytest.mark.parametrize("case", sorted(SECRETS))
def test_secret_never_reaches_any_appender(case, appenders):
    message, secrets = SECRETS[case]
    log.register_secret(PASSWORD)
    log.info(message, PASSWORD)
    log.warn(message, PASSWORD)
    log.PrefixLogger("[Microsoft.OSTCExtensions.VMAccessForLinux-1.5.11]").error(message, PASSWORD)
    out = appenders()
    assert set(out) == {"stdout", "file", "console"}
    for name, text in out.items():
        assert text.count("\n") >= 3, (name, text)
        for secret in secrets:
            assert secret not in text, f"{case}: {secret!r} leaked to {name}: {text!r}"
        assert "redacted" in text, (name, text)


def test_redaction_keeps_the_surrounding_text():
    assert log.redact("GET https://a.blob.core.windows.net/c/b?sv=1&sig=X tail") == \
        "GET https://a.blob.core.windows.net/c/b?<redacted> tail"
    assert log.redact("<UserPassword>pw123456</UserPassword>") == "<UserPassword>*<redacted>*</UserPassword>"
    out = log.redact('{"protectedSettings": {"a": {"b": "}"}}, "publicSettings": {"x": 1}}')
    assert out == '{"protectedSettings": "*<redacted>*", "publicSettings": {"x": 1}}'
    # JSON that is itself escaped inside a string (a settings document logged as a value)
    assert log.redact('{\\"protectedSettings\\": \\"MIIBSECRET\\", \\"x\\": 1}') == \
        '{\\"protectedSettings\\": \\"*<redacted>*\\", \\"x\\": 1}'
    # a truncated value is redacted to the end, not leaked
    assert "LEAK" not in log.redact('"protectedSettings": {"a": "LEAK')


def test_short_values_are_not_registered_as_secrets():
    log.register_secret("abc")
    log.register_secret(None)
    assert log.redact("abc abcd") == "abc abcd"


def test_periodic_and_verbose_lines_are_redacted_too(appenders):
    log.register_secret(PASSWORD)
    log.periodic(3600, log.WARNING, "retrying with {0}", PASSWORD)
    log.periodic(3600, log.WARNING, "retrying with {0}", PASSWORD)  # suppressed: same format
    log.verbose("verbose {0}", PASSWORD)
    for name, text in appenders().items():
        if name == "console":  # upstream's console appender is INFO
            assert text.count("retrying") == 1 and "verbose" not in text
        else:
            assert text.count("retrying") == 1 and "verbose" in text
        assert PASSWORD not in text


def test_line_format(appenders):
    log.set_prefix("ExtHandler")
    log.info("Fetched a new incarnation for the WireServer goal state [incarnation {0}]", 1)
    log.PrefixLogger("[Microsoft.Azure.Extensions.CustomScript-2.1.6]").info("Target handler state: enabled")

    def worker():
        log.warn("Error in SendImdsHeartbeat: {0}", "timeout")

    t = threading.Thread(target=worker, name="MonitorHandler")
    t.start()
    t.join()
    for name, text in appenders().items():
        lines = text.splitlines()
        assert len(lines) == 3, (name, text)
        parsed = [LINE.match(line) for line in lines]
        assert all(parsed), (name, lines)
        assert [(m["level"], m["thread"]) for m in parsed] == [
            ("INFO", "ExtHandler"), ("INFO", "ExtHandler"), ("WARNING", "MonitorHandler")]
        assert parsed[0]["rest"] == "ExtHandler Fetched a new incarnation for the WireServer goal state [incarnation 1]"
        assert parsed[1]["rest"] == "[Microsoft.Azure.Extensions.CustomScript-2.1.6] Target handler state: enabled"
        assert parsed[2]["rest"] == "ExtHandler Error in SendImdsHeartbeat: timeout"


def test_no_prefix_and_fixed_timestamp():
    line = log.format_line(log.ERROR, "boom", thread="Daemon", now=0)
    assert line == "1970-01-01T00:00:00.000000Z ERROR Daemon boom\n"
    line = log.format_line(log.VERBOSE, "x", prefix="Daemon", thread="Daemon", now=1718141554.123456)
    assert line.startswith("2024-06-11T21:32:34.123456Z VERBOSE Daemon Daemon x")


def test_non_ascii_is_backslash_escaped_everywhere(appenders):
    log.info("h\u00e9llo \u2603 {0}", "\U0001f600")
    for name, text in appenders().items():
        assert text.endswith("h\\xe9llo \\u2603 \\U0001f600\n"), (name, text)
        text.encode("ascii")


def test_multiline_messages_are_written_as_is(appenders):
    log.error("Failed to run 'daemon': boom\nTraceback (most recent call last):\n  File x")
    for text in appenders().values():
        assert text.count("\n") == 3 and "\nTraceback (most recent call last):\n  File x\n" in text


def test_levels_and_bad_format_arguments():
    stream = io.StringIO()
    log.add_appender("s", log.StreamAppender(log.INFO, stream))
    log.verbose("hidden")
    log.info("{0} and {1}", "only one")  # a wrong format never raises
    log.info("{name}", "x")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "{0} and {1} ('only one',)" in text and "{name} ('x',)" in text


def test_file_appender_appends_and_survives_a_missing_directory(tmp_path):
    path = tmp_path / "waagent.log"
    path.write_text("old line\n")
    log.add_appender("file", log.FileAppender(log.INFO, str(path)))
    log.add_appender("gone", log.FileAppender(log.INFO, str(tmp_path / "no" / "such" / "file")))
    log.info("new line")
    assert path.read_text().startswith("old line\n") and path.read_text().endswith(" new line\n")
