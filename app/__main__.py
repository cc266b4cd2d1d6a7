"""`python -m app …` is `xr0 …` (what `torchrun --nproc-per-node K -m app train …` starts on each rank)."""

import sys

from app.cli.main import main

sys.exit(main())
