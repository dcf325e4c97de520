import sys

from nfguard.cli import main

sys.exit(main())
