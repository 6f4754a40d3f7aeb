"""`python -m slimgpt ...`: the same as the `slimgpt` command."""
import sys

from slimgpt.cli import main

sys.exit(main())
