import sys

from prunepass.cli import main

sys.exit(main())
