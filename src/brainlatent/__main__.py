import sys

from brainlatent.cli import main

sys.exit(main())
