"""Rules of the agent's code that a reader cannot see from one file (issue 12 item 5).

* An import inside a function is allowed only where a lean process needs it (what the idle ext-handler
  child, the lean supervisor, ``-version`` or a daemon that does not provision must not load: see
  test_child_lean.py, test_child_imports.py, test_daemon_lean_supervisor.py) or for a real cycle. Each one is
  listed below with its reason; a new one, or an entry nothing uses any more, fails.
* No ``getattr``/``hasattr``/``setattr`` probing: the agent's objects are typed, so their attributes are read
  directly. The few left test what the platform or the Python version has.
* The import graph of the agent has no circle.

The fabric emulator, the lab and the extension kit are tools around the agent, not the agent: not scanned.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "guestagent"
TOOLS = ("guestagent/fabric/", "guestagent/lab/", "guestagent/kit/", "guestagent/exthandler/kit.py",
         "guestagent/exthandler/extensions/kitsupport.py")

CRYPTO = "cryptography/asn1crypto (~6.7 MB) stay out of the idle child: certificates are decrypted in a helper"
ZIP = "zipfile only while a package is unpacked or an archive written, not in the idle child"
CLI = "the command line: -version and -help import only the parser; a command's modules load when it runs"
PROVISION = "ovf-env.xml goes through minidom: only a daemon that provisions (or deprovisions a user) loads it"

#: (file, imported module) → why the import is inside a function.
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("guestagent/cli.py", "guestagent.conf"): CLI,
    ("guestagent/cli.py", "guestagent.log"): CLI,
    ("guestagent/cli.py", "guestagent.osutil.system"): CLI,
    ("guestagent/cli.py", "guestagent.osutil.root"): CLI,
    ("guestagent/cli.py", "guestagent.osutil.osrelease"): CLI,
    ("guestagent/cli.py", "importlib"): CLI,
    ("guestagent/cli.py", "importlib.util"): CLI,
    ("guestagent/cli.py", "traceback"): CLI,
    ("guestagent/conf.py", "guestagent.log"): "configuration room: left to the typed-Config change (issue 12)",
    ("guestagent/conf.py", "guestagent.osutil.system"): "configuration room: left to the typed-Config change",
    ("guestagent/daemon/supervisor.py", "threading"): "the lean supervisor imports only os/select/sys/time/"
                                                      "_signal; the fork that writes an event loads the rest",
    ("guestagent/daemon/supervisor.py", "guestagent.events"): "see threading",
    ("guestagent/daemon/supervisor.py", "guestagent.log"): "see threading",
    ("guestagent/daemon/supervisor.py", "guestagent.osutil.system"): "see threading",
    ("guestagent/exthandler/extensions/package.py", "zipfile"): ZIP,
    ("guestagent/exthandler/logcollector.py", "zipfile"): ZIP,
    ("guestagent/protocol/history.py", "zipfile"): ZIP,
    ("guestagent/osutil/password.py", "ctypes"): "the password-hash backend is chosen at run time by what the "
                                                 "Python has (crypt is gone in 3.13, crypt_r replaces it)",
    ("guestagent/osutil/password.py", "ctypes.util"): "see ctypes",
    ("guestagent/osutil/password.py", "crypt_r"): "see ctypes",
    ("guestagent/osutil/password.py", "crypt"): "see ctypes",
    ("guestagent/osutil/password.py", "secrets"): "secrets → hashlib → _hashlib maps libcrypto (~3.6 MB): only "
                                                  "when a password is hashed",
    ("guestagent/osutil/processes.py", "ctypes"): "ctypes (libffi) only when malloc_trim is called",
    ("guestagent/osutil/sshkeys.py", "cryptography"): CRYPTO,
    ("guestagent/osutil/sshkeys.py", "cryptography.hazmat.primitives"): CRYPTO,
    ("guestagent/protocol/certificates.py", "hashlib"): "see password.py secrets: only when a thumbprint is made",
    ("guestagent/protocol/certificates.py", "cryptography"): CRYPTO,
    ("guestagent/protocol/certificates.py", "cryptography.hazmat.primitives"): CRYPTO,
    ("guestagent/protocol/certificates.py", "cryptography.hazmat.primitives.asymmetric"): CRYPTO,
    ("guestagent/protocol/certificates.py", "cryptography.x509.oid"): CRYPTO,
    ("guestagent/protocol/certificates.py", "guestagent.protocol.cms"): CRYPTO,
    ("guestagent/exthandler/extensions/signing.py", "guestagent.protocol.signatures"):
        "package signatures are verified in a helper interpreter; in-process only where the crypto is loaded",
    ("guestagent/protocol/cms.py", "cryptography"): CRYPTO + "; the cipher classes moved in cryptography 43",
    ("guestagent/protocol/cms.py", "cryptography.hazmat.primitives"): CRYPTO,
    ("guestagent/protocol/cms.py", "cryptography.hazmat.primitives.asymmetric"): CRYPTO,
    ("guestagent/protocol/cms.py", "cryptography.hazmat.primitives.ciphers"): CRYPTO,
    ("guestagent/protocol/cms.py", "cryptography.hazmat.primitives.serialization"): CRYPTO,
    ("guestagent/protocol/cms.py", "cryptography.hazmat.decrepit.ciphers.algorithms"): CRYPTO,
    ("guestagent/protocol/cms.py", "asn1crypto"): CRYPTO,
    ("guestagent/protocol/endpoint.py", "guestagent.osutil.network"): "pyroute2 only in the daemon's discovery "
                                                                      "(netlink in short-lived steps, issue 12)",
    ("guestagent/protocol/xml.py", "lxml"): "libxml2 mapped at the first parse: the certificates helper imports "
                                            "this module and parses nothing",
    ("guestagent/osutil/system.py", "guestagent.osutil.processes"): "psutil only when a command times out",
    ("guestagent/protocol/http.py", "guestagent.osutil.processes"): "psutil only when the first request names "
                                                                    "the goal-state agent",
    ("guestagent/provisioning/deprovision.py", "guestagent.provisioning.dvd"): PROVISION,
    ("guestagent/provisioning/handler.py", "guestagent.provisioning.dvd"): PROVISION,
    ("guestagent/provisioning/handler.py", "guestagent.provisioning.provision"): PROVISION,
    ("guestagent/provisioning/handler.py", "guestagent.provisioning.preprovisioned"): PROVISION,
    ("guestagent/provisioning/handler.py", "guestagent.provisioning.deprovision"):
        "the cached-state clean-up only when the VM id changed, not at every start",
    ("guestagent/provisioning/cloudinit.py", "guestagent.provisioning.ovfenv"): PROVISION,
    ("guestagent/provisioning/cloudinit.py", "guestagent.osutil.ssh"):
        "SSH key files only while cloud-init provisions: every start asks whether cloud-init is enabled",
}

#: (file, object probed) → why a getattr/hasattr/setattr is right there.
PROBES: dict[tuple[str, str], str] = {
    ("guestagent/cli.py", "importlib.import_module(module_name)"): "the command table names its function "
                                                                    "(None: not implemented yet)",
    ("guestagent/conf.py", "self"): "the option table maps each key to its attribute",
    ("guestagent/daemon/supervisor.py", "os"): "pidfd_open: Linux 5.3+ and a Python built with it",
    ("guestagent/daemon/supervisor.py", "signal"): "pidfd_send_signal: see os.pidfd_open",
    ("guestagent/osutil/system.py", "os"): "pidfd_open: see supervisor.py",
    ("guestagent/osutil/password.py", "lib"): "libcrypt without crypt_r (a ctypes library has no other test)",
}


def _agent_files() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(TOOLS):
            out.append((rel, ast.parse(path.read_text(), rel)))
    return out


def _module_of(node: ast.ImportFrom, rel: str) -> str:
    if not node.level:
        return node.module or ""
    package = rel[:-3].split("/")[:-node.level] if not rel.endswith("__init__.py") else rel.split("/")[:-node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def _imported(node: ast.AST, rel: str) -> list[str]:
    """The modules an import statement loads (``from pkg import mod`` names the submodule when it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = _module_of(node, rel)
    subs = [f"{base}.{a.name}" for a in node.names if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).
            with_suffix(".py").exists() or (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).is_dir()]
    return subs or [base]


def local_imports() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for rel, tree in _agent_files():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        for module in _imported(node, rel):
                            found.setdefault((rel, module), []).append(node.lineno)
    return found


def _attr_probe(node: ast.AST) -> Optional[str]:
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr") and node.args):
        return ast.unparse(node.args[0])
    return None


def test_function_local_imports_are_the_listed_ones():
    found = local_imports()
    new = {f"{rel}:{lines[0]} imports {module}" for (rel, module), lines in found.items()
           if (rel, module) not in LOCAL_IMPORTS}
    assert not new, ("function-local imports without a reason (import at the top, or add the reason to "
                     f"LOCAL_IMPORTS): {sorted(new)}")
    stale = set(LOCAL_IMPORTS) - set(found)
    assert not stale, f"LOCAL_IMPORTS entries nothing uses any more (delete them): {sorted(stale)}"


def test_no_attribute_probing_in_the_agent():
    found = {}
    for rel, tree in _agent_files():
        for node in ast.walk(tree):
            target = _attr_probe(node)
            if target is not None:
                found.setdefault((rel, target), node.lineno)
    new = {f"{rel}:{line} probes {target}" for (rel, target), line in found.items() if (rel, target) not in PROBES}
    assert not new, f"getattr/hasattr/setattr on the agent's own objects (read the typed attribute): {sorted(new)}"
    stale = set(PROBES) - set(found)
    assert not stale, f"PROBES entries nothing uses any more (delete them): {sorted(stale)}"


def _runtime_imports(tree: ast.AST):
    """Every import statement that can run (module level or in a function), TYPE_CHECKING blocks left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in _runtime_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def test_the_agent_import_graph_has_no_circle():
    """Also through function-local imports: a circle hidden in a function is still a circle."""
    names = {rel[:-3].replace("/", ".").removesuffix(".__init__") for rel, _ in _agent_files()}
    graph: dict[str, set[str]] = {}
    for rel, tree in _agent_files():
        me = rel[:-3].replace("/", ".").removesuffix(".__init__")
        graph[me] = {m for node in _runtime_imports(tree) for m in _imported(node, rel) if m in names and m != me}
    circles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, f"import circles: {circles}"

