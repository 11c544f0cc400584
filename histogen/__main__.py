import sys

from histogen.cli import main

sys.exit(main())
