"""`python -m framework.evaluate ...`: the evaluate command on its own (see cli.py)."""
import sys

from framework.evaluate.cli import main

sys.exit(main())
