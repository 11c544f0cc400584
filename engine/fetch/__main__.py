import sys

from engine.fetch.cli import main

sys.exit(main())
