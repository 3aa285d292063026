import sys

from ckpt_inspector.cli import main

sys.exit(main())
