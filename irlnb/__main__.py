import sys

from irlnb.pipeline.cli import main

sys.exit(main())
