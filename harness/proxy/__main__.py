import sys

from harness.proxy.server import main

sys.exit(main())
