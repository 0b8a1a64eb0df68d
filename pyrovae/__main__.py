import sys

from pyrovae.run.cli import main

sys.exit(main())
