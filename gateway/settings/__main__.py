"""`python -m gateway.settings --table`: print the README's Configuration table;
`--flags-table`: docs/configuration.md's table of the settings' command-line flags."""

from __future__ import annotations

import argparse

from gateway.settings import Settings, configuration_table, declared
from gateway.settings.reference import flags_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.settings")
    parser.add_argument("--table", action="store_true", help="the README's Configuration table")
    parser.add_argument(
        "--flags-table",
        action="store_true",
        help="docs/configuration.md's command-line flags table",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(configuration_table(), end="")
    elif args.flags_table:
        print(flags_table(Settings(), declared().values()), end="")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
