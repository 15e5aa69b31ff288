"""``python -m byzshield.comm``: torchrun, its stores bound (:mod:`byzshield.comm.launch`)."""

import sys

from byzshield.comm.launch import torchrun

sys.argv[0] = "python -m byzshield.comm"  # what --help shows as the usage
torchrun(sys.argv[1:])
