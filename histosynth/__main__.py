import sys

from histosynth import main

sys.exit(main())
