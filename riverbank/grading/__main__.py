"""``python -m riverbank.grading SUBMISSIONS --out GRADEBOOK``: grade a folder of submitted notebooks."""

import sys

from .cli import main

sys.exit(main())
