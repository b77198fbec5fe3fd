"""``python -m search.cli``: the ``prunetune`` console script."""

import sys

from search.cli.main import main

sys.exit(main())
