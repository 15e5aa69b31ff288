"""``python -m byzshield.placement``: the worst-case table of a placement. The command
line lives above the core (:mod:`byzshield.placement_cli`); the placements themselves
(:mod:`byzshield.placement`) import nothing of it."""

import sys

from byzshield.placement_cli import main

sys.exit(main())
