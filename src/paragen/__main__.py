"""``python -m paragen``: the same as the ``paragen`` command."""

import sys

from paragen.cli import main

sys.exit(main())
