import sys

from esjax.cli.commands import main

sys.exit(main())
