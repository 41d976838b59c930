import sys

from stablesr.cli.main import main

sys.exit(main())
