"""How much memory the host process holds (`resident_bytes`): the dry run's host line and the memory
benchmark read it. (Huge pages for glibc malloc were tried here and removed: docs/architecture.md.)"""


def resident_bytes() -> dict[str, int] | None:
    """This process's resident memory now and at its largest ("now", "peak"), in bytes; None where
    /proc/self/status does not say (not Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii"))
        return {"now": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return None
