"""`python -m gateway.settings --table`: print the README's Configuration table."""

from __future__ import annotations

import argparse

from gateway.settings import configuration_table

parser = argparse.ArgumentParser(prog="python -m gateway.settings")
parser.add_argument("--table", action="store_true", help="the README's Configuration table")
if parser.parse_args().table:
    print(configuration_table(), end="")
else:
    parser.print_help()
