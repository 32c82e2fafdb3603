"""Family choice on upstream's distro-version samples (telemetry values; skipped without ../shared)."""

from __future__ import annotations

from guestagent.osutil import distros

THRESHOLDS = ("7", "8.6", "12", "13.2", "18.04", "24.04", "4")


def _samples(upstream) -> list[str]:
    return [line.rstrip("\n") for line in (upstream / "distro_versions.txt").read_text().splitlines()]


def test_every_sample_parses(upstream):
    samples = _samples(upstream)
    assert len(samples) > 1000
    assert all(distros.version_key(v) for v in samples)  # upstream's test: no sample parses to nothing


def test_every_sample_gets_a_family_for_every_versioned_rule(upstream):
    """Each family rule that compares versions picks a family for every sample (a comparison upstream
    cannot make, number against text, counts as False instead of raising)."""
    names = ("ubuntu", "debian", "devuan", "rhel", "almalinux", "sles", "opensuse")
    for version in _samples(upstream):
        for name in names:
            assert distros.make(name, version, full_name="openSUSE" if name == "opensuse" else "").family \
                in distros.FAMILIES


def test_rhel_thresholds_on_samples(upstream):
    """Upstream's loose comparison: 8.10 is modern (>= 8.6, numerically), 8.5.x is not, 9.x is."""
    samples = set(_samples(upstream))
    for version, family in (("8.10", "redhat-modern"), ("8.5", "redhat"), ("9.4", "redhat-modern"),
                            ("7.9", "redhat"), ("6.10", "redhat6")):
        if version in samples:
            assert distros.make("rhel", version).family == family, version
    for t in THRESHOLDS:
        assert distros.version_key(t)
