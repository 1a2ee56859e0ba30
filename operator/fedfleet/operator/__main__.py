import sys

from fedfleet.operator.main import main

sys.exit(main())
