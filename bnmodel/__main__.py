import sys

from bnmodel.cli import main

sys.exit(main())
