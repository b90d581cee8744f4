"""`python -m llava.demo` (see `llava.demo.cli`)."""

import sys

from llava.demo.cli import cli

sys.exit(cli())
