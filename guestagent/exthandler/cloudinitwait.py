"""``Extensions.WaitForCloudInit``: before the first extension, wait for cloud-init (upstream 2.15).

``cloud-init status --wait`` bounded by ``Extensions.WaitForCloudInitTimeout``; whatever happens (cloud-init
missing, failed, timed out) the wait is done once and extensions then run.
"""

from __future__ import annotations

from guestagent import events, log
from guestagent.conf import Config
from guestagent.errors import CommandError
from guestagent.osutil import system


class CloudInitWait:
    def __init__(self, config: Config, lib_dir: str):
        self.enabled = config.extensions_wait_for_cloud_init
        self.timeout = config.extensions_wait_for_cloud_init_timeout
        self.lib_dir = lib_dir
        self.done = False

    def wait(self) -> None:
        if not self.enabled or self.done:
            return
        op = events.WALAEventOperation.CloudInit
        message = "Waiting for cloud-init to complete..."
        log.info("{0}", message)
        events.add_event(op, message=message, lib_dir=self.lib_dir)
        try:
            result = system.run(["cloud-init", "status", "--wait"], timeout=self.timeout)
            message = f"cloud-init completed\n{result.stdout}"
            log.info("{0}", message)
            events.add_event(op, message=message, lib_dir=self.lib_dir)
        except CommandError as e:
            message = ("An error occurred while waiting for cloud-init; will proceed to execute VM extensions. "
                       f"Extensions that have conflicts with cloud-init may fail.\n{e}")
            log.error("{0}", message)
            events.add_event(op, is_success=False, message=message, log_event=False, lib_dir=self.lib_dir)
        self.done = True  # also after an error: extensions run anyway
