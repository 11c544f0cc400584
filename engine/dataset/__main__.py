import sys

from engine.dataset.cli import main

sys.exit(main())
