"""Options of the [clone] group (in nova's config files, and nova-clone's)."""

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "clone",
    title="Live clones",
    help="Options of nova-clonedriver: where snapshot generations live and "
    "how bless and launch behave.",
)

OPTS = [
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/nova-clonedriver",
        help="Directory of the node's snapshot store: generations "
        "(memory image, device state, frozen disk bases) and the "
        "clones' overlays. QEMU's user must be able to traverse "
        "it. Keep it on the filesystem of the instances' disks so "
        "frozen bases can be hard links instead of copies.",
    ),
    cfg.StrOpt(
        "libvirt_uri",
        default="qemu:///system",
        help="libvirt connection the engine works on (nova-clone; the "
        "nova driver uses nova's own [libvirt] connection).",
    ),
    cfg.IntOpt(
        "bless_downtime_limit_ms",
        default=10,
        min=1,
        help="Longest pause QEMU may plan for the master's final "
        "memory copy. Smaller values mean a shorter pause but "
        "more pre-copy passes for a guest that writes a lot. "
        "TCG masters (domain type 'qemu') always use 0: QEMU "
        "before 9.0 loses writes in later passes under TCG.",
    ),
    cfg.IntOpt(
        "bless_timeout_s",
        default=300,
        min=1,
        help="Give up a bless (and let the master run on untouched) "
        "when its memory has not converged in this time.",
    ),
    cfg.IntOpt(
        "max_disk_layers",
        default=16,
        min=2,
        help="Refuse a bless that would give one of the master's "
        "disks more than this many layers (its top and every "
        "backing file). Each bless adds one: the master goes on "
        "writing to a new overlay on the frozen image.",
    ),
    cfg.IntOpt(
        "launch_parallelism",
        default=8,
        min=1,
        help="How many clones one launch starts at the same time.",
    ),
    cfg.IntOpt(
        "tcg_tb_cache_mib",
        default=0,
        min=0,
        help="Translation cache of clones of TCG masters (domain type "
        "qemu), in MiB; 0 leaves QEMU's default, a buffer that grows as "
        "the guest runs code (24 MiB for the test guest after reading "
        "1 GiB). Smaller saves host memory per clone at the cost of guest "
        "speed: 8 saved 16 MiB per clone and made re-reading 1 GiB 1.5 "
        "times slower. KVM clones have no translation cache.",
    ),
    cfg.IntOpt(
        "agent_timeout_s",
        default=60,
        min=1,
        help="How long a clone's qemu-guest-agent (masters that run one) "
        "may take to answer after the clone's restore; launch then sets "
        "the clone's clock and hostname through it, and reseeds its RNG "
        "when the guest's kernel ignores the VM generation ID. A clone "
        "whose RNG must be reseeded and whose agent does not answer is "
        "destroyed; one that only keeps its master's clock and hostname "
        "runs on, with an error in the log.",
    ),
    cfg.FloatOpt(
        "live_clone_weight_multiplier",
        default=10.0,
        help="Weight of nova_clonedriver.scheduler.weights."
        "LiveCloneWeigher (when enabled in [filter_scheduler] "
        "weight_classes): how strongly the scheduler prefers the "
        "host that holds a live image's memory. Negative "
        "values spread clones away from it instead.",
    ),
    cfg.StrOpt(
        "fork_policy",
        default="project",
        choices=[
            ("project", "a server of the requester's own project may be forked"),
            ("admin", "only admins may fork servers (of any project)"),
            ("disabled", "clone_of is refused"),
        ],
        help="Who may create a server with the metadata "
        "clone_of=<server>, which forks that running server: a "
        "fork holds all of the forked server's memory.",
    ),
    cfg.IntOpt(
        "fork_reuse_s",
        default=60,
        min=0,
        help="A server created with the metadata clone_of=<server> "
        "forks that server: it reuses a generation of it blessed "
        "at most this long ago, so a burst of such requests "
        "shares one bless; 0 blesses for every request. A fork's "
        "generation is freed once it is older than this and no "
        "clone uses it.",
    ),
    cfg.IntOpt(
        "min_free_memory_mib",
        default=2048,
        min=0,
        help="The nova driver refuses a new clone (nova reschedules "
        "it to another host) while the host's MemAvailable is "
        "below this. Clones share their snapshot's memory until "
        "they write it, so placement may admit more of them "
        "than the host could hold if all diverged; this floor "
        "keeps the host out of swap and the OOM killer.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)
