"""``--help`` in sections and within a terminal's width: a click command whose options are listed under
headings (what to train, the recipe, how to run, ...) instead of one flat list."""

from __future__ import annotations

import click

#: Help lines are wrapped at this width (or the terminal's, if narrower).
HELP_WIDTH = 100
#: The options' column; a longer option (with its metavar) puts its help on the next line.
TERM_WIDTH = 26


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options under ``sections``: ``{heading: [parameter name, ...]}``.
    An option that no section names (one added later, or by a plugin) is listed under "Other options", so
    none is ever left out of the help."""

    def __init__(self, *args, sections: dict[str, list[str]], **kwargs):
        kwargs.setdefault("context_settings", {}).setdefault("max_content_width", HELP_WIDTH)
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)}
        records = {name: record for name, record in records.items() if record}
        listed = set()
        for heading, names in list(self.sections.items()) + [("Other options", [n for n in records])]:
            # terms padded to one width, so that every section's help text starts in the same column
            rows = [(term.ljust(TERM_WIDTH), text) for name in names if name in records and name not in listed
                    for term, text in [records[name]]]
            listed.update(name for name in names if name in records)
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows, col_max=TERM_WIDTH)
