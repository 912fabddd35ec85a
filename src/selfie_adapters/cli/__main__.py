"""`python -m selfie_adapters.cli ...` (handy under torchrun)."""

import sys

from . import main

sys.exit(main())
