"""The only code that touches the operating system."""

from guestagent.osutil.osrelease import distro, distro_info, os_release

__all__ = ["distro", "distro_info", "os_release"]
