"""The agent's own provisioning steps on the OS (spec 05 §3.3 steps 6–13) and ``waagent -provision``.

Order matters and is upstream's: hostname, publish, user account (useradd, password, sudoers,
sshd_config, public keys, key pairs), custom data, root password, host keys, sshd reload. OS-helper
errors become :class:`ProvisionError` so the handler reports ``ProvisioningFailed`` with the reason.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from guestagent import log
from guestagent.conf import Config
from guestagent.errors import CommandError, CryptError, OSUtilError, ProvisionError
from guestagent.osutil import distros, hostname, network, ssh, users
from guestagent.osutil.nethelper import NetOps
from guestagent.provisioning import customdata
from guestagent.provisioning.ovfenv import OvfEnv


class Provisioner:
    """Applies one :class:`OvfEnv` to the OS according to ``conf`` (a :class:`guestagent.conf.Config`)."""

    def __init__(self, conf: Config, distro: Optional[distros.Distro] = None,
                 sleep: Callable[[float], None] = time.sleep, net: Optional[NetOps] = None):
        self.conf = conf
        self.distro = distro or distros.detect()
        self.sleep = sleep
        self.net = net or network.Direct()  # the daemon before Ready: netlink in this process

    # --- steps 6-10 ----------------------------------------------------------------------------------
    def provision(self, ovf: OvfEnv) -> None:
        log.info("Handle ovf-env.xml.")
        try:
            log.info("Set hostname [{0}]", ovf.hostname)
            hostname.set_hostname(ovf.hostname, self.distro)
            log.info("Publish hostname [{0}]", ovf.hostname)
            hostname.publish_hostname(ovf.hostname, self.distro, self.conf.lib_dir, self.net, sleep=self.sleep)
            self.config_user_account(ovf)
            customdata.save_customdata(ovf.customdata, self.conf.lib_dir, self.conf.provisioning_decode_custom_data,
                                       self.conf.provisioning_execute_custom_data)
            if self.conf.provisioning_delete_root_password:
                users.del_root_password(self.conf.os_password_path)
        except (OSUtilError, CommandError, CryptError) as e:
            raise ProvisionError(f"Failed to provision: {e}")

    def config_user_account(self, ovf: OvfEnv) -> None:
        conf = self.conf
        if users.is_sys_user(ovf.username, conf.provisioning_allow_reset_sys_user):
            raise ProvisionError(f"Refusing to provision the user name {ovf.username!r}: it is an existing system "
                                 f"account (uid below UID_MIN; Provisioning.AllowResetSysUser=n)")
        log.info("Create user account if not exists")
        users.useradd(ovf.username)
        if ovf.user_password is not None:
            log.info("Set user password.")
            users.set_password(ovf.username, ovf.user_password, conf.provisioning_password_crypt_id,
                               conf.provisioning_password_crypt_salt_length,
                               conf.provisioning_allow_reset_sys_user, self.distro.regular_users)
        log.info("Configure sudoer")
        users.conf_sudoer(ovf.username, nopasswd=ovf.user_password is None, sudoers_dir=conf.os_sudoers_dir)
        log.info("Configure sshd")
        ssh.conf_sshd(conf.sshd_config_path, ovf.disable_ssh_password_auth, conf.os_ssh_client_alive_interval)
        for key in ovf.ssh_pubkeys:
            log.info("Deploy ssh public key.")
            ssh.deploy_ssh_pubkey(ovf.username, key.path, key.fingerprint, key.value, conf.lib_dir,
                                  conf.os_home_dir)
        for pair in ovf.ssh_keypairs:
            log.info("Deploy ssh key pairs.")
            ssh.deploy_ssh_keypair(ovf.username, pair.path, pair.fingerprint, conf.lib_dir, conf.os_home_dir)

    # --- steps 11-12 ---------------------------------------------------------------------------------
    def reg_ssh_host_key(self) -> str:
        """Regenerate the host keys when configured; return the thumbprint of the configured type."""
        key_type = self.conf.provisioning_ssh_host_key_pair_type
        if self.conf.provisioning_regenerate_ssh_host_key_pair:
            ssh.regenerate_host_keys(self.conf.os_ssh_dir, key_type)
        return ssh.host_key_thumbprint(self.conf.os_ssh_dir, key_type)

    def restart_ssh_service(self) -> None:
        ssh.restart_ssh_service(self.distro.restart_ssh)
