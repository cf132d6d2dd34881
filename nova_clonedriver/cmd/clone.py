"""nova-clone: the operator's CLI, working on libvirt domains directly.

A cliff application (as python-openstackclient is): this module holds the
application (global options, configuration, logging, errors and exit
codes); the commands are in :mod:`nova_clonedriver.cmd.commands`,
registered under the entry-point namespace ``nova_clonedriver.cli``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any
from typing import TextIO

from cliff import _argparse
from cliff import app
from cliff import commandmanager
import libvirt
from oslo_config import cfg
from oslo_log import log as oslo_logging
import pbr.version

from nova_clonedriver import conf
from nova_clonedriver.cmd import progress as progress_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.pageserver import control

CONF = conf.CONF
NAME = "nova-clone"
NAMESPACE = "nova_clonedriver.cli"
DEFAULT_CONFIG_FILES = ["/etc/nova/nova.conf", "/etc/nova/nova-compute.conf"]

# Failures an operator can act on: one line on stderr, exit status 1.
ERRORS: tuple[type[BaseException], ...] = (
    api.BlessError,
    api.LaunchError,
    api.GenerationNotFound,
    api.GenerationInUse,
    api.CloneNotFound,
    cfg.Error,
    libvirt.libvirtError,
    control.PageServiceError,
    testguest.TestGuestMissing,
)

EXIT_ERROR = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Fork running libvirt domains into clones on this host, without the rest of \
OpenStack (the nova driver does the same for nova's servers).

A snapshot (also called a generation) is a running domain frozen at one \
instant: its memory, device state and disks. "bless" takes one while the \
domain (the master) keeps running; the master pauses only for the last \
milliseconds of the copy. A snapshot is named by an id; every command \
accepts a unique prefix of it.

A clone is a new, transient libvirt domain that resumes from the instant of \
a snapshot, with its own name, UUID, MAC addresses and disk overlay. Its \
memory is a copy-on-write mapping of the snapshot's, so clones of one \
snapshot share every page they have not written, and a clone runs within \
a fraction of a second. "destroy" ends a clone; "discard" frees a snapshot \
and refuses while any clone of it exists.

Options are read from the [clone] section of nova's config files."""

EPILOG = """\
Examples:
  nova-clone bless web                  # snapshot the running domain "web"
  nova-clone launch 3f2a --count 4      # four clones of snapshot 3f2a...
  nova-clone list -f json               # snapshots and their clones, as JSON
  nova-clone destroy web-clone-1a2b3c4d
  nova-clone discard 3f2a

Output: results go to stdout, as a table or as chosen with -f json, -f \
yaml, -f value (lists also -f csv; single objects also -f shell), and -c \
COLUMN to pick columns (see "nova-clone help COMMAND"). Logs and progress \
go to stderr.

Exit status: 0 on success; 1 when the command failed (the reason is one \
line on stderr) or the demo found a problem with a clone; 2 on wrong usage."""


class HelpFormatter(_argparse.SmartHelpFormatter):
    """Descriptions and epilogs keep their paragraphs; a paragraph with
    indented lines (examples) is printed as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(blocks)


def _version() -> str:
    try:
        return pbr.version.VersionInfo("nova-clonedriver").version_string()
    except Exception:  # not installed (run from a bare checkout)
        return "unknown"


class CloneApp(app.App):
    NAME = NAME
    LOG = logging.getLogger(NAME)

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        super().__init__(
            description=DESCRIPTION,
            version=_version(),
            command_manager=commandmanager.CommandManager(NAMESPACE),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            # "nova-clone launch --help": the help of launch
            deferred_help=True,
        )
        self.progress = progress_mod.Progress(None)
        self._configured = False
        self._no_command = False

    def build_option_parser(
        self,
        description: str | None,
        version: str | None,
        argparse_kwargs: dict[str, Any] | None = None,
    ) -> argparse.ArgumentParser:
        kwargs = {
            "prog": NAME,
            "epilog": EPILOG,
            "formatter_class": HelpFormatter,
            # "launch --co 2" must not be taken for --config-file.
            "allow_abbrev": False,
            **(argparse_kwargs or {}),
        }
        parser = super().build_option_parser(description, version, kwargs)
        for action in parser._actions:
            if "--debug" in action.option_strings:
                action.help = "log debug messages, and show tracebacks on errors"
            elif "--log-file" in action.option_strings:
                action.metavar = "PATH"
                action.help = "also log to this file (overrides the config's log_file)"
            elif "--quiet" in action.option_strings:
                action.help = (
                    "log only warnings and errors; no progress lines unless --progress is given"
                )
            elif "--verbose" in action.option_strings:
                action.help = (
                    "show informational log messages even while progress "
                    "is shown; twice: debug messages too"
                )
        parser.add_argument(
            "--config-file",
            action="append",
            metavar="PATH",
            help="nova config file with a [clone] section; repeat for more files "
            "(default: those of " + ", ".join(DEFAULT_CONFIG_FILES) + " that exist)",
        )
        parser.add_argument(
            "--state-dir",
            metavar="DIR",
            help="the snapshot store: where snapshots and the clones' overlays "
            "live (overrides [clone] state_dir)",
        )
        shown = parser.add_mutually_exclusive_group()
        shown.add_argument(
            "--progress",
            action="store_const",
            const=True,
            default=None,
            help="show progress lines on stderr (launch: one per clone as it "
            "comes up; bless, demo: their steps). Default: only when stderr "
            "is a terminal. Informational log messages are hidden while "
            "progress is shown, unless -v is given.",
        )
        shown.add_argument(
            "--no-progress",
            action="store_const",
            const=False,
            dest="progress",
            help="never show progress lines",
        )
        return parser

    def configure_logging(self) -> None:
        """oslo.log sets up logging when a command runs (:meth:`setup`), so
        --help works without reading nova's config files."""

    def initialize_app(self, argv: list[str]) -> None:
        shown = self.options.progress
        if shown is None:
            shown = self.options.verbose_level > 0 and _isatty(self.stderr)
        self.progress = progress_mod.Progress(self.stderr if shown else None)

    def interact(self) -> None:
        """No interactive shell: a command is needed."""
        self.stderr.write(
            f"{NAME}: a command is needed, e.g. '{NAME} list'; see '{NAME} --help'\n"
        )
        self._no_command = True

    def run(self, argv: list[str]) -> int:
        result = super().run(argv)
        return EXIT_USAGE if self._no_command else result

    def run_subcommand(self, argv: list[str]) -> int:
        try:
            self.command_manager.find_command(argv)
        except ValueError:  # on stderr, not stdout as cliff does
            matches = self.get_fuzzy_matches(argv[0])
            hint = f" Did you mean {' or '.join(matches)}?" if matches else ""
            self.stderr.write(
                f"{NAME}: '{argv[0]}' is not a {NAME} command; see '{NAME} --help'.{hint}\n"
            )
            return EXIT_USAGE
        return super().run_subcommand(argv)

    def setup(self) -> None:
        """Read the [clone] options from nova's config files and log to
        stderr through oslo.log (once; commands call this before working)."""
        if self._configured:
            return
        options = self.options
        files = options.config_file or [f for f in DEFAULT_CONFIG_FILES if os.path.exists(f)]
        oslo_logging.register_options(CONF)
        CONF([], project="nova", default_config_files=files)
        debug = options.debug or options.verbose_level > 2
        CONF.set_override("debug", debug)
        CONF.set_override("use_stderr", True)  # stdout is for results
        if options.log_file:
            CONF.set_override("log_file", os.path.abspath(options.log_file))
        oslo_logging.setup(CONF, NAME)
        if options.state_dir:
            CONF.set_override("state_dir", os.path.abspath(options.state_dir), group="clone")
        # libvirt prints each error on stderr itself; they reach the operator
        # as exceptions, once, through report_error.
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        if not debug and (
            options.verbose_level == 0 or (self.progress.enabled and options.verbose_level < 2)
        ):
            _quiet_stderr_log()
        self._configured = True

    def connection(self) -> libvirt.virConnect:
        return libvirt.open(CONF.clone.libvirt_uri)

    def page_service(self) -> control.PageServiceClient:
        """This node's page service, through its control socket."""
        return control.PageServiceClient(
            control.socket_path(CONF.clone.state_dir, CONF.pageserver.control_socket)
        )

    def engine(self) -> api.CloneEngine:
        return api.CloneEngine(
            self.connection(),
            CONF.clone.state_dir,
            bless_options=api.BlessOptions.from_group(CONF.clone),
            launch_options=api.LaunchOptions.from_group(CONF.clone),
        )

    def fail(self, message: str) -> int:
        """One line on stderr; the exit status of a failed command."""
        self.stderr.write(f"{NAME}: error: {' '.join(message.split())}\n")
        self.stderr.flush()
        return EXIT_ERROR

    def report_error(self, exc: BaseException) -> int:
        if self.options.debug:
            traceback.print_exception(exc, file=self.stderr)
        return self.fail(str(exc) or type(exc).__name__)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _ignore_libvirt_error(_context: object, _error: object) -> None:
    pass


def _quiet_stderr_log() -> None:
    """Only warnings and errors from the log on stderr (progress, or -q)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    return CloneApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
