import sys

from irlnb.cli import main

sys.exit(main())
