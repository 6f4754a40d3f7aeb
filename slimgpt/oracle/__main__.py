"""`python -m slimgpt.oracle export|check ...`"""
import sys

from slimgpt.oracle.cli import main

sys.exit(main())
