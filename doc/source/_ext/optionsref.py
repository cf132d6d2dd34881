"""``.. clone-options::``: the [clone] and [pageserver] options, generated
from nova_clonedriver.conf.list_opts() (the same source as the sample
config that oslo-config-generator writes), so the reference cannot drift."""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles


class CloneOptions(Directive):
    def run(self) -> list[nodes.Node]:
        from nova_clonedriver import conf

        lines = []
        for group, options in conf.list_opts():
            title = f"[{group.name}]"
            lines += [title, "-" * len(title), "", group.help or "", ""]
            for option in options:
                default = option.default if option.default is not None else "(none)"
                lines += [f"``{option.name}``",
                          f"   *{type(option).__name__.removesuffix('Opt') or 'Str'}*, "
                          f"default ``{default}``. {option.help}", ""]
        node = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, "clone-options"), node)
        return node.children


def setup(app: object) -> dict[str, bool]:
    app.add_directive("clone-options", CloneOptions)
    return {"parallel_read_safe": True}
